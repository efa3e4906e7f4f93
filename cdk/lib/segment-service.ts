// The segment service: GPU container instances (spot and on-demand capacity providers) in the
// isolated subnets, and the ECS service that places one segment task on each.
import { Duration } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { ISOLATED_SUBNETS, PipelineNetwork } from './network';
import { SEGMENT_GPU_DOCKERFILE } from './paths';

/** Segment tasks at most: one per GPU instance. */
export const GPU_INSTANCES_MAX = 2;

/**
 * GPU instance types of the segment service, in on-demand priority order (cheapest first). Both
 * have one NVIDIA GPU (T4 / A10G), 4 vCPUs and 16 GiB of memory.
 */
export const GPU_INSTANCE_TYPES = ['g4dn.xlarge', 'g5.xlarge'] as const;
// The segment container fits one 16 GiB GPU instance with room for the ECS agent and the OS.
const SEGMENT_CONTAINER = { cpu: 3072, memoryReservationMiB: 12288, memoryLimitMiB: 14336 };
/**
 * ECS has no automatic spot → on-demand fallback. The segment service spreads its tasks over a spot
 * and an on-demand capacity provider by weight, so when spot GPUs are short the tasks placed on
 * on-demand keep the queue draining (the scale-out policy adds tasks while messages wait).
 */
export const SEGMENT_CAPACITY_WEIGHTS = { spot: 3, onDemand: 1 };

export interface SegmentServiceProps {
  readonly network: PipelineNetwork;
  readonly cluster: ecs.Cluster;
  readonly environment: Record<string, string>;
  readonly healthCheck: ecs.HealthCheck;
  readonly image: (dockerfile: string, platform: ecrAssets.Platform, buildArgs: Record<string, string>) => ecs.ContainerImage;
  readonly logGroup: logs.ILogGroup;
}

/**
 * Adds the segment service and its GPU capacity to `scope` (the stack: the resources keep the
 * logical ids they had when this was part of IrisStack).
 */
export function addSegmentService(scope: Construct, props: SegmentServiceProps): { service: ecs.BaseService; taskRole: iam.IRole } {
  const { network, cluster, environment, healthCheck, image, logGroup } = props;
  const securityGroup = network.isolatedSecurityGroup(
    'GpuInstanceSecurityGroup',
    'IRIS GPU container instances: no inbound; HTTPS to the VPC endpoints, S3 and DynamoDB only',
  );
  const instanceRole = new iam.Role(scope, 'GpuInstanceRole', { assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com') });
  // One launch template per group: ECS adds the cluster's name to each one's user data, and the
  // spot group's instances also drain their tasks when EC2 announces a spot interruption.
  const launchTemplate = (id: string, options: { spot: boolean }) => {
    const userData = ec2.UserData.forLinux();
    if (options.spot) userData.addCommands('echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config');
    return new ec2.LaunchTemplate(scope, id, {
      // The ECS-optimized GPU AMI, resolved from its public SSM parameter when CloudFormation
      // deploys (a template parameter, not a synth-time lookup).
      machineImage: ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU),
      userData,
      role: instanceRole,
      securityGroup,
      associatePublicIpAddress: false,
      requireImdsv2: true,
      // One hop: containers (bridge network, one hop further) cannot reach the instance's
      // metadata and its role; they use their task role through the ECS agent.
      httpPutResponseHopLimit: 1,
      blockDevices: [
        {
          // The CUDA image is several GB; the AMI's default root volume is 30 GB.
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(100, { volumeType: ec2.EbsDeviceVolumeType.GP3, encrypted: true }),
        },
      ],
    });
  };
  const group = (id: string, options: { spot: boolean }, distribution: autoscaling.InstancesDistribution) =>
    new autoscaling.AutoScalingGroup(scope, id, {
      vpc: network.vpc,
      vpcSubnets: ISOLATED_SUBNETS,
      minCapacity: 0,
      maxCapacity: GPU_INSTANCES_MAX,
      mixedInstancesPolicy: {
        launchTemplate: launchTemplate(`${id}LaunchTemplate`, options),
        launchTemplateOverrides: GPU_INSTANCE_TYPES.map((t) => ({ instanceType: new ec2.InstanceType(t) })),
        instancesDistribution: distribution,
      },
    });
  const spotGroup = group('GpuSpotGroup', { spot: true }, {
    onDemandBaseCapacity: 0,
    onDemandPercentageAboveBaseCapacity: 0,
    spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
  });
  const onDemandGroup = group('GpuOnDemandGroup', { spot: false }, {
    onDemandBaseCapacity: 0,
    onDemandPercentageAboveBaseCapacity: 100,
    onDemandAllocationStrategy: autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
  });
  // ECS managed scaling starts instances for pending tasks and, with managed termination
  // protection, only ever stops instances that run none.
  const spotProvider = new ecs.AsgCapacityProvider(scope, 'GpuSpotCapacityProvider', { autoScalingGroup: spotGroup });
  const onDemandProvider = new ecs.AsgCapacityProvider(scope, 'GpuOnDemandCapacityProvider', {
    autoScalingGroup: onDemandGroup,
  });
  cluster.addAsgCapacityProvider(spotProvider);
  cluster.addAsgCapacityProvider(onDemandProvider);
  // The ECS agent marks its instance DRAINING itself on a spot interruption notice (the
  // statements CDK adds for joining the cluster do not cover that call).
  instanceRole.addToPrincipalPolicy(
    new iam.PolicyStatement({
      sid: 'SpotInstanceDraining',
      actions: ['ecs:UpdateContainerInstancesState'],
      resources: ['*'],
      conditions: { ArnEquals: { 'ecs:cluster': cluster.clusterArn } },
    }),
  );

  // Bridge networking: the container's traffic leaves through the instance's interface and its
  // security group (one task per instance: awsvpc would only add a network interface per task).
  const taskDefinition = new ecs.Ec2TaskDefinition(scope, 'SegmentTaskDefinition', { networkMode: ecs.NetworkMode.BRIDGE });
  taskDefinition.addContainer('worker', {
    image: image(SEGMENT_GPU_DOCKERFILE, ecrAssets.Platform.LINUX_AMD64, {}),
    gpuCount: 1,
    ...SEGMENT_CONTAINER,
    environment,
    logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'segment', logGroup }),
    healthCheck,
    stopTimeout: Duration.seconds(120),
  });
  const service = new ecs.Ec2Service(scope, 'SegmentService', {
    cluster,
    taskDefinition,
    capacityProviderStrategies: [
      { capacityProvider: spotProvider.capacityProviderName, weight: SEGMENT_CAPACITY_WEIGHTS.spot },
      { capacityProvider: onDemandProvider.capacityProviderName, weight: SEGMENT_CAPACITY_WEIGHTS.onDemand },
    ],
    // A deployment stops the old task before starting the new one: no second GPU instance.
    minHealthyPercent: 0,
    maxHealthyPercent: 100,
    circuitBreaker: { rollback: true },
  });
  // The capacity providers must be associated with the cluster before a service may name them;
  // a dependency on the cluster construct covers its ClusterCapacityProviderAssociations child.
  service.node.addDependency(cluster);
  return { service, taskRole: taskDefinition.taskRole };
}
