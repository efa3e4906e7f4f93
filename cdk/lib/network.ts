// The VPC: workers in isolated subnets (no route to or from the internet, no public address), AWS
// APIs through VPC endpoints, security groups that allow HTTPS to those endpoints only, flow logs.
import { Aws } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import { PipelineKeys } from './encryption';

/**
 * Interface endpoints (PrivateLink, private DNS on) of what runs in the isolated subnets calls at
 * run time. The Rust services call S3, DynamoDB (gateway endpoints, below), SQS and EventBridge, and
 * nothing else of AWS (credentials come from the ECS agent, not STS; they read no secret
 * themselves); the notify service also calls the WebSocket Management API, which has no endpoint
 * (see `notify`). ECS reads the ingest task's one secret (IRIS_RECORD_SALT) from Secrets Manager
 * before the container starts, through the task's network interface, hence that endpoint.
 */
export const INTERFACE_ENDPOINTS: Record<string, { service: ec2.InterfaceVpcEndpointAwsService; usedBy: string }> = {
  Sqs: { service: ec2.InterfaceVpcEndpointAwsService.SQS, usedBy: 'every worker: its queue and dead-letter queue' },
  Events: { service: ec2.InterfaceVpcEndpointAwsService.EVENTBRIDGE, usedBy: 'ingest, segment, mesh: PutEvents' },
  EcrApi: { service: ec2.InterfaceVpcEndpointAwsService.ECR, usedBy: 'image pulls (Fargate, the GPU instances\' ECS agent): authorization' },
  EcrDocker: { service: ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER, usedBy: 'image pulls: manifests (the layers come from S3)' },
  Logs: { service: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS, usedBy: 'the awslogs driver of every container' },
  Ecs: { service: ec2.InterfaceVpcEndpointAwsService.ECS, usedBy: 'the ECS agent of the GPU instances' },
  EcsAgent: { service: ec2.InterfaceVpcEndpointAwsService.ECS_AGENT, usedBy: 'the ECS agent of the GPU instances' },
  EcsTelemetry: { service: ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY, usedBy: 'the ECS agent of the GPU instances' },
  SecretsManager: { service: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER, usedBy: 'ECS at ingest task start: IRIS_RECORD_SALT (the execution role)' },
};

/** The gateway endpoints (free; routes in every route table) and the prefix lists of their services. */
const GATEWAY_ENDPOINTS = { S3: ec2.GatewayVpcEndpointAwsService.S3, DynamoDB: ec2.GatewayVpcEndpointAwsService.DYNAMODB };

/** Where the workers and the interface endpoints live: no internet gateway or NAT route. */
export const ISOLATED_SUBNETS: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };

const HTTPS = ec2.Port.tcp(443);

export interface PipelineNetworkProps {
  readonly keys: PipelineKeys;
}

export class PipelineNetwork extends Construct {
  readonly vpc: ec2.Vpc;
  /** The interface endpoints' group: HTTPS in from the worker groups, nothing out. */
  readonly endpointSecurityGroup: ec2.SecurityGroup;
  /**
   * The notify service's group. Notify posts job states to WebSocket clients through the API
   * Gateway Management API, which is public only: API Gateway has no PrivateLink endpoint for
   * WebSocket APIs (the execute-api endpoint serves private REST APIs, and with private DNS on it
   * would even break the public name). So notify runs in a public subnet with a public address,
   * HTTPS out only. It carries job states (ids, statuses, error codes), never image data; its AWS
   * calls still go through the endpoints (private DNS resolves inside the whole VPC).
   */
  readonly notifySecurityGroup: ec2.SecurityGroup;
  /** Managed prefix list ids of S3 and DynamoDB in the deployment's region (read at deploy time). */
  private readonly prefixLists: Array<[string, string]>;

  constructor(scope: Construct, id: string, props: PipelineNetworkProps) {
    super(scope, id);
    // No NAT gateway (a fixed cost a scale-to-zero pipeline should not carry, and a way out the
    // workers do not need); the public subnets exist for notify only.
    this.vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 20, mapPublicIpOnLaunch: false },
        { name: 'workers', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 20 },
      ],
      gatewayEndpoints: Object.fromEntries(Object.entries(GATEWAY_ENDPOINTS).map(([name, service]) => [name, { service }])),
    });
    this.vpc.addFlowLog('FlowLog', {
      destination: ec2.FlowLogDestination.toCloudWatchLogs(props.keys.logGroup(this, 'FlowLogs')),
      trafficType: ec2.FlowLogTrafficType.ALL,
    });

    this.endpointSecurityGroup = new ec2.SecurityGroup(this, 'EndpointSecurityGroup', {
      vpc: this.vpc,
      description: 'IRIS interface VPC endpoints: HTTPS from the IRIS workers only',
      allowAllOutbound: false,
    });
    for (const [name, { service }] of Object.entries(INTERFACE_ENDPOINTS)) {
      this.vpc.addInterfaceEndpoint(name, {
        service,
        subnets: ISOLATED_SUBNETS,
        securityGroups: [this.endpointSecurityGroup],
        privateDnsEnabled: true,
        // Ingress from the worker groups below, not from the whole VPC CIDR.
        open: false,
      });
    }

    // The prefix lists have no CloudFormation attribute, and a synth-time lookup would need an
    // account: an SDK call at deploy time reads each id (DescribeManagedPrefixLists, read-only).
    const customResourceLogs = props.keys.logGroup(this, 'PrefixListLookupLogs');
    this.prefixLists = Object.keys(GATEWAY_ENDPOINTS).map((name) => {
      const call: cr.AwsSdkCall = {
        service: 'EC2',
        action: 'DescribeManagedPrefixLists',
        parameters: { Filters: [{ Name: 'prefix-list-name', Values: [`com.amazonaws.${Aws.REGION}.${name.toLowerCase()}`] }] },
        physicalResourceId: cr.PhysicalResourceId.fromResponse('PrefixLists.0.PrefixListId'),
        outputPaths: ['PrefixLists.0.PrefixListId'],
      };
      const lookup = new cr.AwsCustomResource(this, `${name}PrefixList`, {
        onCreate: call,
        onUpdate: call,
        policy: cr.AwsCustomResourcePolicy.fromStatements([
          // Describe* calls cannot be limited to a resource.
          new iam.PolicyStatement({ actions: ['ec2:DescribeManagedPrefixLists'], resources: ['*'] }),
        ]),
        logGroup: customResourceLogs,
        installLatestAwsSdk: false,
      });
      return [name, lookup.getResponseField('PrefixLists.0.PrefixListId')];
    });

    this.notifySecurityGroup = new ec2.SecurityGroup(this, 'NotifySecurityGroup', {
      vpc: this.vpc,
      description: 'IRIS notify service: HTTPS out only (the public WebSocket Management API and the VPC endpoints)',
      allowAllOutbound: false,
    });
    this.notifySecurityGroup.addEgressRule(ec2.Peer.anyIpv4(), HTTPS, 'HTTPS to the WebSocket Management API (public only)');
    this.notifySecurityGroup.connections.allowTo(this.endpointSecurityGroup, HTTPS, 'notify to the interface endpoints');
  }

  /**
   * A security group for workers in the isolated subnets: no inbound rule; outbound only HTTPS to
   * the interface endpoints and to S3 and DynamoDB (their prefix lists, reached through the
   * gateway endpoints). DNS (the VPC resolver), instance metadata and time sync are link-local
   * services that security groups do not filter.
   */
  isolatedSecurityGroup(id: string, description: string): ec2.SecurityGroup {
    const group = new ec2.SecurityGroup(this, id, { vpc: this.vpc, description, allowAllOutbound: false });
    group.connections.allowTo(this.endpointSecurityGroup, HTTPS, `${id} to the interface endpoints`);
    for (const [name, prefixListId] of this.prefixLists) {
      group.addEgressRule(ec2.Peer.prefixList(prefixListId), HTTPS, `HTTPS to ${name} (gateway endpoint)`);
    }
    return group;
  }
}
