// Customer-managed KMS keys, one per class of data, with the key policies the AWS services that
// write under them need, the grants of the principals that read and write through those services,
// and the EventBridge targets that keep queue and topic policies scoped to one rule.
import { Aws, Names, RemovalPolicy } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

/** How long every log group keeps its events (they are retained, encrypted, when the stack goes). */
export const LOG_RETENTION = logs.RetentionDays.ONE_YEAR;

/** What S3 (SSE-KMS objects) and DynamoDB (tables) call on the data key for the principal using them. */
export const DATA_KEY_ACTIONS = [
  'kms:Decrypt',
  'kms:Encrypt',
  'kms:GenerateDataKey',
  'kms:GenerateDataKeyWithoutPlaintext',
  'kms:ReEncryptFrom',
  'kms:ReEncryptTo',
  'kms:DescribeKey',
];

/** The services through which a principal may use the data key. */
export type DataService = 's3' | 'dynamodb';

export interface PipelineKeysProps {
  /** Prefix of the keys' aliases: the contract's queue prefix (`iris-` → alias/iris-data, …). */
  readonly aliasPrefix: string;
  /** The CloudTrail trail allowed to encrypt its log files with the logs key (its name). */
  readonly trailName: string;
}

/** `<service>.<region>.amazonaws.com`, the value of kms:ViaService for calls made through that service. */
function viaService(service: string): string {
  return `${service}.${Aws.REGION}.amazonaws.com`;
}

/**
 * Three customer-managed keys, each rotated yearly by KMS and retained when the stack is deleted
 * (what they encrypt is retained too, and would be unreadable without them):
 *  - `data`: scans, volumes, labels, meshes (the data bucket, SSE-KMS with a bucket key), the job
 *    and connection records (both tables), and the salt of the upload-key digests in the job
 *    records (a Secrets Manager secret, read by ECS for the ingest task only);
 *  - `messaging`: every SQS queue and dead-letter queue, and the alerts topic;
 *  - `logs`: every CloudWatch log group, and the CloudTrail log files.
 * One key per class rather than per resource: the classes have different readers (people who may
 * read job outputs need not read logs, and the other way round), and a key per resource would only
 * add cost ($1 a month each) and grants without separating anyone.
 *
 * The key policies keep CDK's default statement (the account may delegate use of the key through
 * IAM) and add the AWS services that write under the key on nobody's behalf: S3 and EventBridge
 * sending to the queues, CloudWatch alarms publishing to the topic, CloudWatch Logs, CloudTrail.
 */
export class PipelineKeys extends Construct {
  readonly data: kms.Key;
  readonly messaging: kms.Key;
  readonly logs: kms.Key;

  constructor(scope: Construct, id: string, props: PipelineKeysProps) {
    super(scope, id);
    const key = (keyId: string, alias: string, description: string) =>
      new kms.Key(this, keyId, {
        alias: `alias/${props.aliasPrefix}${alias}`,
        description,
        enableKeyRotation: true,
        removalPolicy: RemovalPolicy.RETAIN,
      });
    this.data = key('DataKey', 'data', 'IRIS data at rest: the data bucket (uploads, job outputs, models), the job and connection tables, and the record salt secret');
    this.messaging = key('MessagingKey', 'messaging', 'IRIS messages at rest: every SQS queue and dead-letter queue, and the alerts topic');
    this.logs = key('LogsKey', 'logs', 'IRIS logs at rest: the CloudWatch log groups and the CloudTrail log files');

    const service = (name: string) => new iam.ServicePrincipal(name);
    // SQS encrypts what a service sends with the sender's use of the key. S3 also sends a test
    // message when the notifications are configured, and fails the bucket's creation if it cannot.
    // The queue policies say which bucket may send (aws:SourceArn); the key is used for nothing
    // but these queues, so the statement carries no condition (as AWS documents it for S3).
    this.messaging.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'S3BucketNotificationsToQueues',
        principals: [service('s3.amazonaws.com')],
        actions: ['kms:GenerateDataKey*', 'kms:Decrypt'],
        resources: ['*'],
      }),
    );
    // EventBridge rules → queues and their dead-letter queues, and the JobFailed rule → topic. The
    // queue and topic policies name each rule; the key cannot (key → rule → queue → key would be a
    // cycle), so it is limited to rules of this account.
    this.messaging.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'EventBridgeRulesToQueuesAndTopic',
        principals: [service('events.amazonaws.com')],
        actions: ['kms:GenerateDataKey*', 'kms:Decrypt'],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
      }),
    );
    this.messaging.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsToTopic',
        principals: [service('cloudwatch.amazonaws.com')],
        actions: ['kms:GenerateDataKey*', 'kms:Decrypt'],
        resources: ['*'],
      }),
    );
    // CloudWatch Logs encrypts each log group's events itself, for log groups of this account and
    // region only (the encryption context names the log group).
    this.logs.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchLogsOfThisAccount',
        principals: [service(`logs.${Aws.REGION}.amazonaws.com`)],
        actions: ['kms:Encrypt*', 'kms:Decrypt*', 'kms:ReEncrypt*', 'kms:GenerateDataKey*', 'kms:Describe*'],
        resources: ['*'],
        conditions: {
          ArnLike: { 'kms:EncryptionContext:aws:logs:arn': `arn:${Aws.PARTITION}:logs:${Aws.REGION}:${Aws.ACCOUNT_ID}:log-group:*` },
        },
      }),
    );
    // CloudTrail encrypts the trail's log files (SSE-KMS), for this stack's trail only.
    const trailArn = `arn:${Aws.PARTITION}:cloudtrail:${Aws.REGION}:${Aws.ACCOUNT_ID}:trail/${props.trailName}`;
    this.logs.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudTrailLogFiles',
        principals: [service('cloudtrail.amazonaws.com')],
        actions: ['kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: {
          StringEquals: { 'aws:SourceArn': trailArn },
          StringLike: { 'kms:EncryptionContext:aws:cloudtrail:arn': `arn:${Aws.PARTITION}:cloudtrail:*:${Aws.ACCOUNT_ID}:trail/*` },
        },
      }),
    );
    this.logs.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudTrailDescribesKey',
        principals: [service('cloudtrail.amazonaws.com')],
        actions: ['kms:DescribeKey'],
        resources: ['*'],
      }),
    );
  }

  /**
   * Lets `grantee` encrypt and decrypt with the data key, only through `services` (kms:ViaService):
   * S3 for SSE-KMS objects (GenerateDataKey to write, Decrypt to read and to complete multipart
   * uploads), DynamoDB for the tables. Never directly: no principal can decrypt a data key itself.
   */
  grantData(grantee: iam.IGrantable, services: readonly DataService[]): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyThroughStorage',
        // What CDK's table grants give (Encrypt, Decrypt, ReEncrypt*, GenerateDataKey*, DescribeKey),
        // spelled out: no task role statement has a wildcard action.
        actions: DATA_KEY_ACTIONS,
        resources: [this.data.keyArn],
        conditions: { StringEquals: { 'kms:ViaService': services.map(viaService) } },
      }),
    );
  }

  /**
   * Lets `grantee` read secrets encrypted with the data key: kms:Decrypt, through Secrets Manager
   * only (GetSecretValue decrypts with the caller's permissions). For the ECS execution role that
   * fetches the record salt at ingest task start; as an identity-policy statement, like the other
   * grants, so the key policy names no role.
   */
  grantSecretsRead(grantee: iam.IGrantable): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'DataKeyThroughSecretsManager',
        actions: ['kms:Decrypt'],
        resources: [this.data.keyArn],
        conditions: { StringEquals: { 'kms:ViaService': viaService('secretsmanager') } },
      }),
    );
  }

  /** Lets `grantee` receive from and send to queues encrypted with the messaging key, through SQS only. */
  grantMessaging(grantee: iam.IGrantable): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'MessagingKeyThroughSqs',
        actions: ['kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [this.messaging.keyArn],
        conditions: { StringEquals: { 'kms:ViaService': viaService('sqs') } },
      }),
    );
  }

  /** A log group encrypted with the logs key, kept for LOG_RETENTION, retained with the stack's data. */
  logGroup(scope: Construct, id: string, logGroupName?: string): logs.LogGroup {
    return new logs.LogGroup(scope, id, {
      logGroupName,
      retention: LOG_RETENTION,
      encryptionKey: this.logs,
      removalPolicy: RemovalPolicy.RETAIN,
    });
  }
}

const EVENTS = () => new iam.ServicePrincipal('events.amazonaws.com');
/** The statement id of a rule's permission (as CDK's own targets name it). */
const ruleSid = (rule: events.IRuleRef) => `AllowEventRule${Names.nodeUniqueId(rule.node)}`;

/**
 * An EventBridge rule → SQS target whose queue policies (the queue's and its dead-letter queue's)
 * admit that rule only (aws:SourceArn). CDK's `SqsQueue` target widens them to the whole account
 * when the queue has a KMS key, to avoid a key → rule → queue → key cycle; here the messaging key
 * admits EventBridge once for the account (PipelineKeys), so the queue policies stay per rule.
 */
export class QueueRuleTarget implements events.IRuleTarget {
  constructor(
    private readonly queue: sqs.IQueue,
    private readonly deadLetterQueue: sqs.IQueue,
  ) {}

  bind(rule: events.IRuleRef): events.RuleTargetConfig {
    const conditions = { ArnEquals: { 'aws:SourceArn': events.CfnRule.arnForRule(rule) } };
    const sid = ruleSid(rule);
    this.queue.addToResourcePolicy(
      new iam.PolicyStatement({
        sid,
        principals: [EVENTS()],
        actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'],
        resources: [this.queue.queueArn],
        conditions,
      }),
    );
    // Events EventBridge cannot deliver (after its own 24 h of retries).
    this.deadLetterQueue.addToResourcePolicy(
      new iam.PolicyStatement({
        sid,
        principals: [EVENTS()],
        actions: ['sqs:SendMessage'],
        resources: [this.deadLetterQueue.queueArn],
        conditions,
      }),
    );
    return { arn: this.queue.queueArn, targetResource: this.queue, deadLetterConfig: { arn: this.deadLetterQueue.queueArn } };
  }
}

/**
 * An EventBridge rule → SNS target whose topic policy admits that rule only. (CDK's `SnsTopic`
 * allows any rule, and grants EventBridge the topic's key without a condition.)
 */
export class TopicRuleTarget implements events.IRuleTarget {
  constructor(private readonly topic: sns.ITopic) {}

  bind(rule: events.IRuleRef): events.RuleTargetConfig {
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: ruleSid(rule),
        principals: [EVENTS()],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: { ArnEquals: { 'aws:SourceArn': events.CfnRule.arnForRule(rule) } },
      }),
    );
    return { arn: this.topic.topicArn, targetResource: this.topic };
  }
}
