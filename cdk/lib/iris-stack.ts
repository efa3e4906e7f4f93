import * as fs from 'fs';
import * as path from 'path';
import { Annotations, Aws, CfnOutput, Duration, IgnoreMode, RemovalPolicy, Stack, StackProps } from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { WebSocketLambdaAuthorizer } from 'aws-cdk-lib/aws-apigatewayv2-authorizers';
import { WebSocketLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { AuditLogging } from './audit';
import { BacklogScaling } from './backlog-scaling';
import { PipelineContract, QUEUE_ROLES, QueueContract, QueueRole, TableContract, queueOf, queuePrefix } from './contract';
import { dockerIgnorePatterns } from './docker-context';
import { PipelineKeys, QueueRuleTarget, TopicRuleTarget } from './encryption';
import { ISOLATED_SUBNETS, PipelineNetwork } from './network';
import { PLACEHOLDER_LAMBDA_DIR, REPO_ROOT, SERVICE_DOCKERFILE } from './paths';
import { addSegmentService, GPU_INSTANCES_MAX } from './segment-service';

export { GPU_INSTANCE_TYPES, SEGMENT_CAPACITY_WEIGHTS } from './segment-service';

export type CpuArchitectureName = 'x86_64' | 'arm64';

export interface IrisStackProps extends StackProps {
  readonly contract: PipelineContract;
  /**
   * The data bucket's name. Bucket names are global, so a real deployment needs its own
   * (`-c bucketName=...`); default: the contract's. It is also part of every job id.
   */
  readonly bucketName?: string;
  /**
   * The notify-routes Lambda's code: a directory holding the `bootstrap` executable, or a .zip of
   * one (`scripts/build-websocket-lambda.sh` builds it into target/lambda/iris-websocket-lambda).
   * Default: the committed placeholder, which fails every invocation, so the WebSocket API is not
   * usable until this is given.
   */
  readonly notifyLambdaCodePath?: string;
  /**
   * The Ed25519 public key that verifies the clients' tokens (EdDSA JWTs from `iris token`), as the
   * base64url without padding of its 32 raw bytes: what `iris token public-key` prints. A public
   * key, not a secret. The Lambda gets it as IRIS_TOKEN_PUBLIC_KEY; without it the $connect
   * authorizer refuses every connection (and synth warns).
   */
  readonly tokenPublicKey?: string;
  /** CPU architecture of the notify-routes Lambda (default arm64, the cheaper one). */
  readonly notifyLambdaArchitecture?: CpuArchitectureName;
  /**
   * CPU architecture of the Fargate services and their images (default x86_64). arm64 is about 20%
   * cheaper on Fargate but its images must then be built on an arm64 machine (or under emulation).
   */
  readonly fargateArchitecture?: CpuArchitectureName;
  /** The repository root (Docker build context); tests may stage a copy. Default: this checkout. */
  readonly repoRoot?: string;
}

/** Fargate size of the CPU workers (1024 cpu units = 1 vCPU). */
// Ingest and mesh hold a whole volume in memory (up to IRIS_MAX_VOXELS = 512×512×2000 int16, 1 GiB,
// plus working copies) and use every core (rayon), hence 2 vCPU / 8 GiB; notify moves small JSON.
const FARGATE_SIZE: Record<'ingest' | 'mesh' | 'notify', { cpu: number; memoryLimitMiB: number }> = {
  ingest: { cpu: 2048, memoryLimitMiB: 8192 },
  mesh: { cpu: 2048, memoryLimitMiB: 8192 },
  notify: { cpu: 256, memoryLimitMiB: 512 },
};

interface WorkerScaling {
  readonly maxTasks: number;
  /** A task's start-up time: how long a scale-out waits before adding more. */
  readonly scaleOutCooldown: Duration;
  /**
   * Alarm when the oldest message has waited this long. Above the worst cold start: SQS metrics of
   * a long-idle queue can take ~15 minutes to resume, and a GPU instance must boot and pull.
   */
  readonly oldestMessageAlarm: Duration;
}

const SCALING: Record<QueueRole, WorkerScaling> = {
  ingest: { maxTasks: 4, scaleOutCooldown: Duration.minutes(2), oldestMessageAlarm: Duration.minutes(20) },
  segment: { maxTasks: GPU_INSTANCES_MAX, scaleOutCooldown: Duration.minutes(5), oldestMessageAlarm: Duration.minutes(30) },
  mesh: { maxTasks: 4, scaleOutCooldown: Duration.minutes(2), oldestMessageAlarm: Duration.minutes(20) },
  notify: { maxTasks: 2, scaleOutCooldown: Duration.minutes(2), oldestMessageAlarm: Duration.minutes(20) },
};

/** Minutes a queue must stay empty (nothing visible or in flight) before its service scales to zero. */
const IDLE_MINUTES_BEFORE_SCALE_IN = 5;

/** The bucket prefixes the stages read and write (shared/core/src/keys.rs, artifacts.rs). */
const UPLOADS = 'uploads/';
const JOBS = 'jobs/';
const MODELS = 'models/';
const JOB_OUTPUTS_EXPIRE_AFTER = Duration.days(90); // as the job records' expiresAt (job.rs)
/**
 * Uploads (the original scans) are read once, by ingest; kept longer than the queues keep a message
 * (14 days), so an ingest message still waiting or dead-lettered finds its upload.
 */
const UPLOADS_EXPIRE_AFTER = Duration.days(30);
/** Overwritten and deleted objects stay recoverable this long (the bucket is versioned), then go. */
const NONCURRENT_VERSIONS_EXPIRE_AFTER = Duration.days(30);
/**
 * The ingest container's variable holding the secret salt of the upload-key digest that job records
 * keep instead of the key (a file name may name a patient). It comes from Secrets Manager only.
 */
export const RECORD_SALT_VARIABLE = 'IRIS_RECORD_SALT';
/** Length of the generated salt: letters and digits, about 285 bits. */
export const RECORD_SALT_LENGTH = 48;
const WEBSOCKET_STAGE = 'live';
const WEBSOCKET_ROUTES = ['subscribe', 'unsubscribe', 'list'] as const;
/** Where the $connect authorizer finds the client's token: `wss://…/live?token=<JWT>`. */
export const WEBSOCKET_TOKEN_SOURCE = 'route.request.querystring.token';

/**
 * Checks a token public key as the Lambda decodes it: 43 base64url characters (no padding) that are
 * the canonical encoding of 32 bytes (the last character's two spare bits zero; a strict decoder
 * rejects anything else, which would refuse every connection at run time instead of here).
 */
export function checkTokenPublicKey(value: string): string {
  const hint = 'tokenPublicKey must be the Ed25519 public key as printed by `iris token public-key`: 43 base64url characters (A-Z a-z 0-9 - _), no padding';
  if (!/^[A-Za-z0-9_-]{43}$/.test(value)) throw new Error(`${hint} (got ${value.length} characters: ${JSON.stringify(value)})`);
  if (Buffer.from(value, 'base64url').toString('base64url') !== value) {
    throw new Error(`${hint}; ${JSON.stringify(value)} is not the canonical encoding of 32 bytes (its last character is wrong)`);
  }
  return value;
}

function pascal(role: string): string {
  return role.charAt(0).toUpperCase() + role.slice(1);
}

function attributeType(type: 'S' | 'N' | 'B'): dynamodb.AttributeType {
  return { S: dynamodb.AttributeType.STRING, N: dynamodb.AttributeType.NUMBER, B: dynamodb.AttributeType.BINARY }[type];
}

function cpuArchitecture(name: CpuArchitectureName): ecs.CpuArchitecture {
  return name === 'arm64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64;
}

function dockerPlatform(name: CpuArchitectureName): ecrAssets.Platform {
  return name === 'arm64' ? ecrAssets.Platform.LINUX_ARM64 : ecrAssets.Platform.LINUX_AMD64;
}

/**
 * An EventBridge pattern from the contract's raw JSON. Only the top-level keys EventBridge matches
 * on are accepted, so a contract change that this mapping does not know fails the synth.
 */
function eventPattern(raw: Readonly<Record<string, unknown>>): events.EventPattern {
  const keys: Record<string, keyof events.EventPattern> = {
    source: 'source',
    'detail-type': 'detailType',
    detail: 'detail',
    account: 'account',
    region: 'region',
    resources: 'resources',
    id: 'id',
    time: 'time',
    version: 'version',
  };
  const pattern: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) {
    const field = keys[key];
    if (!field) throw new Error(`event pattern key ${key} is not supported by the CDK app`);
    pattern[field] = value;
  }
  return pattern as events.EventPattern;
}

export class IrisStack extends Stack {
  readonly bucket: s3.Bucket;
  readonly queues: Record<QueueRole, sqs.Queue>;
  readonly deadLetterQueues: Record<QueueRole, sqs.Queue>;
  readonly jobsTable: dynamodb.Table;
  readonly connectionsTable: dynamodb.Table;
  readonly services: Record<QueueRole, ecs.BaseService>;
  readonly keys: PipelineKeys;
  /** The salt of the upload-key digests in the job records (IRIS_RECORD_SALT of ingest). */
  readonly recordSalt: secretsmanager.Secret;
  readonly network: PipelineNetwork;
  readonly audit: AuditLogging;

  constructor(scope: Construct, id: string, props: IrisStackProps) {
    super(scope, id, props);
    const contract = props.contract;
    const bucketName = props.bucketName ?? contract.bucket.name;
    const repoRoot = props.repoRoot ?? REPO_ROOT;
    const fargateArchitecture = props.fargateArchitecture ?? 'x86_64';
    const prefix = queuePrefix(contract.queues);
    const trailName = `${prefix}data-events`;
    // ---- Customer-managed keys: data (bucket, tables), messaging (queues, topic), logs (encryption.ts).
    const keys = new PipelineKeys(this, 'Keys', { aliasPrefix: prefix, trailName });
    this.keys = keys;

    // ---- Queues: one per stage, each with its dead-letter queue, settings from the contract.
    const queues = {} as Record<QueueRole, sqs.Queue>;
    const deadLetterQueues = {} as Record<QueueRole, sqs.Queue>;
    const queuesByName = new Map<string, sqs.Queue>();
    for (const q of contract.queues) {
      const deadLetterQueue = new sqs.Queue(this, `${pascal(q.role)}DeadLetterQueue`, {
        queueName: q.deadLetterQueue,
        retentionPeriod: Duration.seconds(q.retentionSeconds),
        encryption: sqs.QueueEncryption.KMS,
        encryptionMasterKey: keys.messaging,
        enforceSSL: true,
      });
      const queue = new sqs.Queue(this, `${pascal(q.role)}Queue`, {
        queueName: q.name,
        // The workers extend it with heartbeats every third of IRIS_VISIBILITY_TIMEOUT_SECS, which
        // the containers get from this same value.
        visibilityTimeout: Duration.seconds(q.visibilityTimeoutSeconds),
        retentionPeriod: Duration.seconds(q.retentionSeconds),
        // S3 and EventBridge send to it under the key's policy (PipelineKeys), the workers under
        // their grants (grantWorkerAccess).
        encryption: sqs.QueueEncryption.KMS,
        encryptionMasterKey: keys.messaging,
        enforceSSL: true,
        deadLetterQueue: { queue: deadLetterQueue, maxReceiveCount: q.maxReceiveCount },
      });
      queues[q.role] = queue;
      deadLetterQueues[q.role] = deadLetterQueue;
      queuesByName.set(q.name, queue);
    }
    this.queues = queues;
    this.deadLetterQueues = deadLetterQueues;

    // ---- Data bucket: SSE-KMS with the data key (a bucket key keeps KMS calls, and their cost, to
    // about one per object writer and reader every few minutes), versioned.
    this.bucket = new s3.Bucket(this, 'DataBucket', {
      bucketName,
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: keys.data,
      bucketKeyEnabled: true,
      versioned: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      lifecycleRules: [
        { id: 'expire-uploads', prefix: UPLOADS, expiration: UPLOADS_EXPIRE_AFTER },
        { id: 'expire-job-outputs', prefix: JOBS, expiration: JOB_OUTPUTS_EXPIRE_AFTER },
        // An expiry or a delete leaves a noncurrent version (and a delete marker): both go too.
        { id: 'expire-noncurrent-versions', noncurrentVersionExpiration: NONCURRENT_VERSIONS_EXPIRE_AFTER, expiredObjectDeleteMarker: true },
        // The S3 adapter uploads large outputs in parts; a crashed upload leaves parts behind.
        { id: 'abort-incomplete-multipart-uploads', abortIncompleteMultipartUploadAfter: Duration.days(7) },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.addBucketNotifications(contract, bucketName, queuesByName);
    // ---- Its server access logs and a CloudTrail trail of its object-level events (audit.ts).
    this.audit = new AuditLogging(this, 'Audit', { keys, dataBucket: this.bucket, trailName });

    // ---- The salt of the upload-key digests the job records keep instead of the key: generated by
    // Secrets Manager at deployment (never in the template), encrypted with the data key like the
    // records themselves, and retained: without it no digest could be matched to an upload again.
    this.recordSalt = new secretsmanager.Secret(this, 'RecordSalt', {
      secretName: `${prefix}record-salt`,
      description: `IRIS: salt of the upload-key digests in the job records (${RECORD_SALT_VARIABLE} of the ingest service); never change or delete it`,
      generateSecretString: { passwordLength: RECORD_SALT_LENGTH, excludePunctuation: true, includeSpace: false },
      encryptionKey: keys.data,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // ---- Tables, keys and indexes from the contract.
    this.jobsTable = this.table('JobsTable', contract.jobsTable, { pointInTimeRecovery: true });
    this.connectionsTable = this.table('ConnectionsTable', contract.connectionsTable, { pointInTimeRecovery: false });

    // ---- Event bus, its rules to queues, and an archive to replay from.
    const bus =
      contract.eventBus.name === 'default'
        ? events.EventBus.fromEventBusName(this, 'EventBus', 'default')
        : new events.EventBus(this, 'EventBus', { eventBusName: contract.eventBus.name });
    for (const rule of contract.eventBus.rules) {
      const target = queuesByName.get(rule.targetQueue)!;
      const role = contract.queues.find((q) => q.name === rule.targetQueue)!.role;
      new events.Rule(this, `${pascal(role)}EventRule`, {
        eventBus: bus,
        ruleName: rule.name,
        eventPattern: eventPattern(rule.eventPattern),
        // Events EventBridge cannot deliver (after its own 24 h of retries) go to the same
        // dead-letter queue as the target's failed messages, whose alarm then fires.
        targets: [new QueueRuleTarget(target, deadLetterQueues[role])],
      });
    }
    const archive = new events.Archive(this, 'EventArchive', {
      sourceEventBus: bus,
      archiveName: `${contract.eventBus.name}-archive`.slice(0, 48),
      description: 'Every pipeline event, for replay (e.g. into a new notify queue or an integration)',
      eventPattern: { source: [contract.eventBus.source] },
      retention: Duration.days(30),
    });

    // ---- Alerts: dead letters, stuck queues, failed jobs.
    const alerts = new sns.Topic(this, 'AlertsTopic', { topicName: `${prefix}alerts`, enforceSSL: true, masterKey: keys.messaging });
    // The topic's own policy replaces SNS's default one, which is what lets alarms of the account publish.
    alerts.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarms',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [alerts.topicArn],
        conditions: { ArnLike: { 'aws:SourceArn': `arn:${Aws.PARTITION}:cloudwatch:${Aws.REGION}:${Aws.ACCOUNT_ID}:alarm:*` } },
      }),
    );
    this.addAlarms(contract, alerts);
    if (!contract.eventBus.detailTypes.includes('JobFailed')) {
      throw new Error('the contract has no JobFailed detail type, which the job-failure alert matches');
    }
    const jobFailedRule = new events.Rule(this, 'JobFailedRule', {
      eventBus: bus,
      ruleName: `${contract.eventBus.name}-job-failed`,
      description: 'One alert per failed job; AWS/Events MatchedEvents of this rule counts them',
      eventPattern: { source: [contract.eventBus.source], detailType: ['JobFailed'] },
      targets: [new TopicRuleTarget(alerts)],
    });

    // ---- Network: workers in isolated subnets, AWS APIs through VPC endpoints, no NAT (network.ts).
    const network = new PipelineNetwork(this, 'Network', { keys });
    this.network = network;
    const workerSecurityGroup = network.isolatedSecurityGroup(
      'WorkerSecurityGroup',
      'IRIS Fargate workers: no inbound; HTTPS to the VPC endpoints, S3 and DynamoDB only',
    );
    const cluster = new ecs.Cluster(this, 'Cluster', { vpc: network.vpc });

    // ---- WebSocket API and its notify-routes Lambda.
    const { api, stage, notifyRoutes } = this.addWebSocketApi(props, contract, prefix, bucketName);

    // ---- Services.
    const environment = (q: QueueContract): Record<string, string> => ({
      // Exactly what shared/core/src/config.rs reads.
      IRIS_BACKEND: 'aws',
      IRIS_BUCKET: bucketName,
      IRIS_QUEUE_PREFIX: prefix,
      IRIS_JOBS_TABLE: contract.jobsTable.name,
      IRIS_CONNECTIONS_TABLE: contract.connectionsTable.name,
      IRIS_EVENT_BUS: contract.eventBus.name,
      // The redrive policy allows one receive beyond the workers' attempts (bootstrap.rs): a worker
      // sees an exhausted message first and fails its job with retries_exhausted.
      IRIS_MAX_ATTEMPTS: String(q.maxReceiveCount - 1),
      IRIS_VISIBILITY_TIMEOUT_SECS: String(q.visibilityTimeoutSeconds),
      IRIS_LOG_FORMAT: 'json',
      RUST_LOG: 'info',
      AWS_REGION: Aws.REGION,
    });
    const healthCheck: ecs.HealthCheck = {
      // docker/healthcheck.sh, the image's HEALTHCHECK: the worker is PID 1 and holds a live HTTPS
      // connection to AWS (its SQS long poll).
      command: ['CMD', '/usr/local/bin/iris-healthcheck'],
      interval: Duration.seconds(30),
      timeout: Duration.seconds(5),
      retries: 3,
      startPeriod: Duration.seconds(60),
    };
    const image = (dockerfile: string, platform: ecrAssets.Platform, buildArgs: Record<string, string>) =>
      ecs.ContainerImage.fromAsset(repoRoot, {
        file: dockerfile,
        buildArgs,
        platform,
        // The context is the repository root: only what the Dockerfile's allowlist names is staged
        // (never cdk.out or node_modules). Images are built at deploy time, not at synth.
        ignoreMode: IgnoreMode.DOCKER,
        exclude: dockerIgnorePatterns(dockerfile, repoRoot),
      });
    const logGroup = (role: QueueRole) => keys.logGroup(this, `${pascal(role)}Logs`, `/ecs/${queueOf(contract, role).name}`);

    // The salt as ECS sees it: the same secret, without its key, so that the container's grant
    // (GetSecretValue) does not also add the execution role to the data key's policy (the keys
    // are granted through IAM with kms:ViaService only: PipelineKeys.grantSecretsRead).
    const recordSaltForEcs = secretsmanager.Secret.fromSecretAttributes(this, 'RecordSaltForEcs', {
      secretCompleteArn: this.recordSalt.secretArn,
    });
    const services = {} as Record<QueueRole, ecs.BaseService>;
    const taskRoles = {} as Record<QueueRole, iam.IRole>;
    for (const role of ['ingest', 'mesh', 'notify'] as const) {
      const q = queueOf(contract, role);
      const taskDefinition = new ecs.FargateTaskDefinition(this, `${pascal(role)}TaskDefinition`, {
        ...FARGATE_SIZE[role],
        runtimePlatform: {
          cpuArchitecture: cpuArchitecture(fargateArchitecture),
          operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
        },
      });
      const containerEnvironment = environment(q);
      if (role === 'ingest') {
        // The container's grant gives the execution role GetSecretValue on the secret; the data key
        // comes from PipelineKeys (kms:Decrypt through Secrets Manager only, in the role's policy).
        keys.grantSecretsRead(taskDefinition.obtainExecutionRole());
      }
      if (role === 'notify') {
        // Where the notify consumer posts job states to the subscribed WebSocket connections: in
        // AWS mode it sends through the API Gateway Management API at this endpoint (it needs
        // execute-api:ManageConnections on the stage, granted below).
        containerEnvironment.IRIS_WS_CALLBACK_URL = this.webSocketCallbackUrl(api);
      }
      taskDefinition.addContainer('worker', {
        image: image(SERVICE_DOCKERFILE, dockerPlatform(fargateArchitecture), { SERVICE: role }),
        environment: containerEnvironment,
        // Ingest alone digests upload keys. ECS reads the secret at task start with the task's
        // execution role, through the Secrets Manager endpoint; the task role never can.
        ...(role === 'ingest' ? { secrets: { [RECORD_SALT_VARIABLE]: ecs.Secret.fromSecretsManager(recordSaltForEcs) } } : {}),
        logging: ecs.LogDrivers.awsLogs({ streamPrefix: role, logGroup: logGroup(role) }),
        healthCheck,
        // SIGTERM lets in-flight messages finish; Fargate allows at most 120 s before SIGKILL.
        stopTimeout: Duration.seconds(120),
      });
      const service = new ecs.FargateService(this, `${pascal(role)}Service`, {
        cluster,
        taskDefinition,
        // No desiredCount: CloudFormation then creates the service with one task (scaled to zero
        // once the queue has been idle) and never resets the scaled count on later deployments.
        // Isolated and without a public address, except notify: the WebSocket Management API it
        // posts to is reachable from the internet only (PipelineNetwork.notifySecurityGroup).
        ...(role === 'notify'
          ? { assignPublicIp: true, vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC }, securityGroups: [network.notifySecurityGroup] }
          : { assignPublicIp: false, vpcSubnets: ISOLATED_SUBNETS, securityGroups: [workerSecurityGroup] }),
        minHealthyPercent: 0,
        maxHealthyPercent: 200,
        circuitBreaker: { rollback: true },
      });
      services[role] = service;
      taskRoles[role] = taskDefinition.taskRole;
    }

    // The segment service and its GPU capacity (segment-service.ts).
    const segment = addSegmentService(this, {
      network,
      cluster,
      environment: environment(queueOf(contract, 'segment')),
      healthCheck,
      image,
      logGroup: logGroup('segment'),
    });
    services.segment = segment.service;
    taskRoles.segment = segment.taskRole;
    this.services = services;

    for (const role of QUEUE_ROLES) {
      new BacklogScaling(this, `${pascal(role)}Scaling`, {
        service: services[role],
        queue: queues[role],
        maxTasks: SCALING[role].maxTasks,
        scaleOutCooldown: SCALING[role].scaleOutCooldown,
        idleMinutes: IDLE_MINUTES_BEFORE_SCALE_IN,
      });
    }

    // ---- Least privilege: each task role gets only what its service does.
    this.grantWorkerAccess(contract, taskRoles, bus);
    // The notify consumer posts job states to WebSocket connections through the Management API.
    stage.grantManagementApiAccess(taskRoles.notify);

    // ---- Outputs: every endpoint and name.
    const output = (id: string, value: string, description: string) => new CfnOutput(this, id, { value, description });
    output('BucketName', this.bucket.bucketName, 'Data bucket (IRIS_BUCKET); uploads go to uploads/<user>/<name>');
    for (const q of contract.queues) {
      output(`${pascal(q.role)}QueueUrl`, queues[q.role].queueUrl, `${q.role} queue`);
      output(`${pascal(q.role)}DeadLetterQueueUrl`, deadLetterQueues[q.role].queueUrl, `${q.role} dead-letter queue`);
    }
    output('QueuePrefix', prefix, 'IRIS_QUEUE_PREFIX');
    output('JobsTableName', this.jobsTable.tableName, 'IRIS_JOBS_TABLE');
    output('ConnectionsTableName', this.connectionsTable.tableName, 'IRIS_CONNECTIONS_TABLE');
    output('EventBusName', bus.eventBusName, 'IRIS_EVENT_BUS');
    output('EventBusArn', bus.eventBusArn, 'Pipeline event bus');
    output('EventArchiveName', archive.archiveName, 'Archive of every pipeline event (replay)');
    output('JobFailedRuleName', jobFailedRule.ruleName, 'Rule matching JobFailed events (alerts topic)');
    output('AlertsTopicArn', alerts.topicArn, 'Alarms and failed jobs; subscribe an email or chat endpoint');
    output('WebSocketUrl', stage.url, 'WebSocket endpoint for clients');
    output('WebSocketCallbackUrl', stage.callbackUrl, 'API Gateway Management API endpoint (posting to connections)');
    output('WebSocketApiId', api.apiId, 'WebSocket API id');
    output('NotifyRoutesFunctionName', notifyRoutes.functionName, 'Lambda behind the WebSocket routes');
    output('ClusterName', cluster.clusterName, 'ECS cluster of the queue workers');
    output('RecordSaltSecretArn', this.recordSalt.secretArn, 'Secrets Manager secret of the record salt (IRIS_RECORD_SALT of ingest); retained, never rotate it');
    output('DataKeyArn', keys.data.keyArn, 'KMS key of the bucket and tables: uploaders and readers need kms:GenerateDataKey / kms:Decrypt on it');
    output('AccessLogBucketName', this.audit.accessLogBucket.bucketName, 'S3 server access logs of the data bucket (data-bucket/)');
    output('TrailBucketName', this.audit.trailBucket.bucketName, 'CloudTrail data events of the data bucket');
    for (const role of QUEUE_ROLES) {
      output(`${pascal(role)}ServiceName`, services[role].serviceName, `ECS service of the ${role} worker`);
    }
  }

  /**
   * S3 → SQS notifications exactly as the contract lists them. They are declared on the bucket
   * itself (CloudFormation's NotificationConfiguration) rather than through CDK's custom resource,
   * so no Lambda is involved; S3 checks the destinations when it creates the bucket, so the bucket
   * depends on the queue policies that let it send. CloudFormation has no field for a rule's id:
   * S3 assigns ids, and only the contract's ids differ from what `iris aws bootstrap` creates.
   */
  private addBucketNotifications(contract: PipelineContract, bucketName: string, queuesByName: Map<string, sqs.Queue>): void {
    // The bucket's ARN from its name, not from the bucket resource: the queue policies must exist
    // before the bucket, so they cannot refer to it.
    const bucketArn = `arn:${Aws.PARTITION}:s3:::${bucketName}`;
    const cfnBucket = this.bucket.node.defaultChild as s3.CfnBucket;
    const configurations: s3.CfnBucket.QueueConfigurationProperty[] = [];
    const notifiedQueues = new Set<sqs.Queue>();
    for (const rule of contract.bucket.notifications) {
      const queue = queuesByName.get(rule.queue)!;
      const filterRules = [
        ...(rule.prefix ? [{ name: 'prefix', value: rule.prefix }] : []),
        ...(rule.suffix ? [{ name: 'suffix', value: rule.suffix }] : []),
      ];
      for (const event of rule.events) {
        configurations.push({
          event,
          queue: queue.queueArn,
          ...(filterRules.length > 0 ? { filter: { s3Key: { rules: filterRules } } } : {}),
        });
      }
      notifiedQueues.add(queue);
    }
    cfnBucket.notificationConfiguration = { queueConfigurations: configurations };
    for (const queue of notifiedQueues) {
      queue.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'BucketNotifications',
          principals: [new iam.ServicePrincipal('s3.amazonaws.com')],
          actions: ['sqs:SendMessage'],
          resources: [queue.queueArn],
          conditions: { ArnEquals: { 'aws:SourceArn': bucketArn }, StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
        }),
      );
      // A dependency on the queue construct covers its QueuePolicy child.
      cfnBucket.node.addDependency(queue);
    }
  }

  private table(id: string, spec: TableContract, options: { pointInTimeRecovery: boolean }): dynamodb.Table {
    const table = new dynamodb.Table(this, id, {
      tableName: spec.name,
      partitionKey: { name: spec.partitionKey.name, type: attributeType(spec.partitionKey.type) },
      ...(spec.sortKey ? { sortKey: { name: spec.sortKey.name, type: attributeType(spec.sortKey.type) } } : {}),
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: spec.timeToLiveAttribute,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: options.pointInTimeRecovery },
      encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED,
      encryptionKey: this.keys.data,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    for (const index of spec.indexes) {
      table.addGlobalSecondaryIndex({
        indexName: index.name,
        partitionKey: { name: index.partitionKey.name, type: attributeType(index.partitionKey.type) },
        ...(index.sortKey ? { sortKey: { name: index.sortKey.name, type: attributeType(index.sortKey.type) } } : {}),
        // As `iris aws bootstrap` creates them: the services read whole items from the index.
        projectionType: dynamodb.ProjectionType.ALL,
      });
    }
    return table;
  }

  private addAlarms(contract: PipelineContract, alerts: sns.ITopic): void {
    const action = new cloudwatchActions.SnsAction(alerts);
    for (const q of contract.queues) {
      new cloudwatch.Alarm(this, `${pascal(q.role)}DeadLetterAlarm`, {
        alarmName: `${q.deadLetterQueue}-not-empty`,
        alarmDescription: `${q.deadLetterQueue} holds messages: a ${q.role} message was given up (its job failed with retries_exhausted) or an event could not be delivered`,
        metric: this.deadLetterQueues[q.role].metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }),
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }).addAlarmAction(action);
      const limit = SCALING[q.role].oldestMessageAlarm;
      new cloudwatch.Alarm(this, `${pascal(q.role)}OldestMessageAlarm`, {
        alarmName: `${q.name}-oldest-message-age`,
        alarmDescription: `A message has waited in ${q.name} for more than ${limit.toMinutes()} minutes: workers are not keeping up or not starting`,
        metric: this.queues[q.role].metricApproximateAgeOfOldestMessage({ period: Duration.minutes(1), statistic: 'Maximum' }),
        threshold: limit.toSeconds(),
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }).addAlarmAction(action);
    }
  }

  private addWebSocketApi(props: IrisStackProps, contract: PipelineContract, prefix: string, bucketName: string) {
    const codePath = props.notifyLambdaCodePath ?? PLACEHOLDER_LAMBDA_DIR;
    if (props.notifyLambdaCodePath === undefined) {
      Annotations.of(this).addWarningV2(
        'iris:notifyLambdaPlaceholder',
        'The notify-routes Lambda is the placeholder that fails every invocation: the WebSocket API is not usable until the real one is deployed. Build it with scripts/build-websocket-lambda.sh and deploy with -c notifyLambdaCodePath=../target/lambda/iris-websocket-lambda (relative to cdk/).',
      );
    } else {
      const isZip = codePath.endsWith('.zip') && fs.existsSync(codePath) && fs.statSync(codePath).isFile();
      if (!isZip && !fs.existsSync(path.join(codePath, 'bootstrap'))) {
        throw new Error(`notifyLambdaCodePath ${codePath} must be a .zip or a directory containing the Lambda's bootstrap executable`);
      }
    }
    const tokenPublicKey = props.tokenPublicKey === undefined ? undefined : checkTokenPublicKey(props.tokenPublicKey);
    if (tokenPublicKey === undefined) {
      Annotations.of(this).addWarningV2(
        'iris:tokenPublicKeyMissing',
        'No tokenPublicKey: the $connect authorizer refuses every WebSocket connection until it is given. Deploy with -c tokenPublicKey=<the output of `iris token public-key`> (the Ed25519 public key that verifies the clients\' tokens).',
      );
    }
    const architecture = props.notifyLambdaArchitecture === 'x86_64' ? lambda.Architecture.X86_64 : lambda.Architecture.ARM_64;
    // One binary (iris-websocket-lambda) answers both kinds of event, told apart by their shape:
    // the $connect authorizer's (REQUEST type: token → IAM policy with the user id as context) and
    // the routes' ($connect records the connection under that user id, $disconnect removes it, the
    // others answer through the Management API).
    const notifyRoutes = new lambda.Function(this, 'NotifyRoutesFunction', {
      description: 'WebSocket $connect authorizer and routes ($connect, $disconnect, $default, subscribe, unsubscribe, list) of the notify service',
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture,
      handler: 'bootstrap',
      code: lambda.Code.fromAsset(codePath),
      memorySize: 256,
      timeout: Duration.seconds(10),
      environment: {
        IRIS_BACKEND: 'aws',
        IRIS_BUCKET: bucketName,
        IRIS_QUEUE_PREFIX: prefix,
        IRIS_JOBS_TABLE: contract.jobsTable.name,
        IRIS_CONNECTIONS_TABLE: contract.connectionsTable.name,
        IRIS_EVENT_BUS: contract.eventBus.name,
        IRIS_LOG_FORMAT: 'json',
        // Unset when not given: the Lambda then refuses every connection.
        ...(tokenPublicKey === undefined ? {} : { IRIS_TOKEN_PUBLIC_KEY: tokenPublicKey }),
      },
      logGroup: this.keys.logGroup(this, 'NotifyRoutesLogs'),
    });
    const integration = new WebSocketLambdaIntegration('NotifyRoutes', notifyRoutes);
    // API Gateway answers 401 itself, without invoking the authorizer, when the token is missing.
    const authorizer = new WebSocketLambdaAuthorizer('ConnectAuthorizer', notifyRoutes, {
      identitySource: [WEBSOCKET_TOKEN_SOURCE],
    });
    const api = new apigwv2.WebSocketApi(this, 'WebSocketApi', {
      apiName: `${prefix}websocket`,
      description: 'IRIS job state notifications (README: WebSocket protocol)',
      routeSelectionExpression: '$request.body.action',
      connectRouteOptions: { integration, authorizer },
      disconnectRouteOptions: { integration },
      // Anything without a known action still reaches the Lambda, which answers bad_request.
      defaultRouteOptions: { integration },
    });
    for (const action of WEBSOCKET_ROUTES) api.addRoute(action, { integration });
    const stage = new apigwv2.WebSocketStage(this, 'WebSocketStage', {
      webSocketApi: api,
      stageName: WEBSOCKET_STAGE,
      autoDeploy: true,
    });
    // The Lambda answers on the connection itself (Management API), and reads/writes connections.
    notifyRoutes.addEnvironment('IRIS_WS_CALLBACK_URL', this.webSocketCallbackUrl(api));
    stage.grantManagementApiAccess(notifyRoutes);
    this.connectionsStatements(contract).forEach((s) => notifyRoutes.addToRolePolicy(s));
    this.keys.grantData(notifyRoutes, ['dynamodb']);
    return { api, stage, notifyRoutes };
  }

  /**
   * The stage's Management API endpoint, `https://{apiId}.execute-api.{region}.{urlSuffix}/live`
   * (what `stage.callbackUrl` gives), from the API's id and the stage's name only, never from the
   * stage resource: the API's routes and authorizer refer to the Lambda, so a reference from the
   * Lambda's environment to anything that depends on them would be a dependency cycle.
   */
  private webSocketCallbackUrl(api: apigwv2.IWebSocketApi): string {
    const stack = Stack.of(this);
    return `https://${api.apiId}.execute-api.${stack.region}.${stack.urlSuffix}/${WEBSOCKET_STAGE}`;
  }

  /** Connection-table and job-table access of the WebSocket side (the notify consumer and the Lambda). */
  private connectionsStatements(contract: PipelineContract): iam.PolicyStatement[] {
    return [
      new iam.PolicyStatement({
        sid: 'Connections',
        actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query'],
        resources: [this.connectionsTable.tableArn, `${this.connectionsTable.tableArn}/index/*`],
      }),
      // A subscriber gets the job's current state; `list` reads the user's jobs (userId-createdAt).
      new iam.PolicyStatement({
        sid: 'ReadJobs',
        actions: ['dynamodb:GetItem', 'dynamodb:Query'],
        resources: [this.jobsTable.tableArn, ...contract.jobsTable.indexes.map((i) => `${this.jobsTable.tableArn}/index/${i.name}`)],
      }),
    ];
  }

  private grantWorkerAccess(contract: PipelineContract, taskRoles: Record<QueueRole, iam.IRole>, bus: events.IEventBus): void {
    const allQueueArns = QUEUE_ROLES.flatMap((r) => [this.queues[r].queueArn, this.deadLetterQueues[r].queueArn]);
    const objects = (prefix: string) => this.bucket.arnForObjects(`${prefix}*`);
    const add = (role: QueueRole, statements: iam.PolicyStatement[]) =>
      statements.forEach((s) => taskRoles[role].addToPrincipalPolicy(s));

    for (const role of QUEUE_ROLES) {
      add(role, [
        new iam.PolicyStatement({
          sid: 'ConsumeOwnQueue',
          actions: ['sqs:ReceiveMessage', 'sqs:ChangeMessageVisibility', 'sqs:DeleteMessage', 'sqs:GetQueueUrl'],
          resources: [this.queues[role].queueArn],
        }),
        // The runtime moves a message it gives up to <queue>-dlq itself (SqsWorkQueue::dead_letter).
        new iam.PolicyStatement({
          sid: 'DeadLetterOwnQueue',
          actions: ['sqs:SendMessage', 'sqs:GetQueueUrl'],
          resources: [this.deadLetterQueues[role].queueArn],
        }),
        // Every binary opens all four queues and their dead-letter queues at start
        // (iris_aws::open_backends looks each URL up by name), so each may resolve every URL;
        // GetQueueUrl reveals an address, not a message.
        new iam.PolicyStatement({ sid: 'ResolveQueueUrls', actions: ['sqs:GetQueueUrl'], resources: allQueueArns }),
      ]);
    }

    // Reads and writes by prefix. ListBucket (bucket level: no prefix condition could apply to the
    // GetObject/HeadObject it is checked for) makes a missing object a 404 rather than a 403, which
    // the stages turn into missing_input / upload_replaced instead of a permanent storage error.
    const listBucket = () =>
      new iam.PolicyStatement({ sid: 'MissingObjectsAre404', actions: ['s3:ListBucket'], resources: [this.bucket.bucketArn] });
    const read = (sid: string, ...prefixes: string[]) =>
      new iam.PolicyStatement({ sid, actions: ['s3:GetObject'], resources: prefixes.map(objects) });
    // PutObject covers multipart uploads (the S3 adapter's path above 16 MiB); Abort cleans up one.
    const writeJobs = () =>
      new iam.PolicyStatement({ sid: 'WriteJobOutputs', actions: ['s3:PutObject', 's3:AbortMultipartUpload'], resources: [objects(JOBS)] });
    add('ingest', [read('ReadUploads', UPLOADS), writeJobs(), listBucket()]);
    add('segment', [read('ReadVolumesAndModels', JOBS, MODELS), writeJobs(), listBucket()]);
    add('mesh', [read('ReadLabels', JOBS), writeJobs(), listBucket()]);

    // Job records: ingest creates them (PutItem if absent); every stage reads its job and moves it
    // forward with one conditional UpdateItem. No stage lists jobs.
    const jobs = this.jobsTable.tableArn;
    add('ingest', [new iam.PolicyStatement({ sid: 'JobRecords', actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'], resources: [jobs] })]);
    for (const role of ['segment', 'mesh'] as const) {
      add(role, [new iam.PolicyStatement({ sid: 'JobRecords', actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'], resources: [jobs] })]);
    }
    // Stages publish every transition; notify only consumes events and never fails a job.
    for (const role of ['ingest', 'segment', 'mesh'] as const) {
      add(role, [new iam.PolicyStatement({ sid: 'PublishEvents', actions: ['events:PutEvents'], resources: [bus.eventBusArn] })]);
    }
    add('notify', this.connectionsStatements(contract));

    // The keys behind all of it, each only through the service that stores the data (kms:ViaService):
    // every worker receives from its queue and sends to its dead-letter queue; the stages read and
    // write objects and job records; notify reads and writes records only.
    for (const role of QUEUE_ROLES) {
      this.keys.grantMessaging(taskRoles[role]);
      this.keys.grantData(taskRoles[role], role === 'notify' ? ['dynamodb'] : ['s3', 'dynamodb']);
    }
  }
}
