// Who read or wrote what: S3 server access logs of the data bucket, and a CloudTrail trail of its
// object-level (data) events, each in a locked-down bucket of its own.
import { Aws, Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as cloudtrail from 'aws-cdk-lib/aws-cloudtrail';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { PipelineKeys } from './encryption';

/** Server access logs: every request to the data bucket, kept a year. */
export const ACCESS_LOGS_EXPIRE_AFTER = Duration.days(365);
/** CloudTrail log files: six years, HIPAA's retention period for required documentation (45 CFR 164.316(b)(2)). */
export const TRAIL_LOGS_EXPIRE_AFTER = Duration.days(6 * 365 + 2);

export interface AuditLoggingProps {
  readonly keys: PipelineKeys;
  /** The bucket whose requests and object-level events are logged. */
  readonly dataBucket: s3.Bucket;
  /** The trail's name (the logs key's policy names the trail by it). */
  readonly trailName: string;
}

/** Settings every audit bucket shares: private, TLS only, owner-enforced, kept when the stack goes. */
const LOCKED_DOWN: s3.BucketProps = {
  blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
  objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
  enforceSSL: true,
  removalPolicy: RemovalPolicy.RETAIN,
};

export class AuditLogging extends Construct {
  /** Server access logs of the data bucket (under data-bucket/) and of the trail bucket (trail-bucket/). */
  readonly accessLogBucket: s3.Bucket;
  /** CloudTrail log files, SSE-KMS with the logs key. */
  readonly trailBucket: s3.Bucket;
  readonly trail: cloudtrail.Trail;

  constructor(scope: Construct, id: string, props: AuditLoggingProps) {
    super(scope, id);
    this.accessLogBucket = new s3.Bucket(this, 'AccessLogBucket', {
      ...LOCKED_DOWN,
      // S3 delivers server access logs only to buckets whose default encryption is SSE-S3.
      encryption: s3.BucketEncryption.S3_MANAGED,
      lifecycleRules: [{ id: 'expire-access-logs', expiration: ACCESS_LOGS_EXPIRE_AFTER }],
    });
    this.trailBucket = new s3.Bucket(this, 'TrailBucket', {
      ...LOCKED_DOWN,
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: props.keys.logs,
      bucketKeyEnabled: true,
      lifecycleRules: [{ id: 'expire-trail-logs', expiration: TRAIL_LOGS_EXPIRE_AFTER }],
    });
    this.logAccessTo(props.dataBucket, 'data-bucket/');
    this.logAccessTo(this.trailBucket, 'trail-bucket/');

    // Object-level reads and writes of the data bucket (GetObject, PutObject, multipart uploads,
    // DeleteObject, …) with the caller, source address and time. Management events (IAM, KMS, bucket
    // configuration) belong to the account's own trail, not to one application's.
    this.trail = new cloudtrail.Trail(this, 'Trail', {
      trailName: props.trailName,
      bucket: this.trailBucket,
      encryptionKey: props.keys.logs,
      enableFileValidation: true,
      isMultiRegionTrail: false,
      includeGlobalServiceEvents: false,
      managementEvents: cloudtrail.ReadWriteType.NONE,
    });
    this.trail.addS3EventSelector([{ bucket: props.dataBucket }], {
      readWriteType: cloudtrail.ReadWriteType.ALL,
      includeManagementEvents: false,
    });
  }

  /**
   * Sends `source`'s server access logs to the access-log bucket under `prefix`. Set on the
   * CloudFormation resource rather than through the Bucket's `serverAccessLogsBucket`, which would
   * have to exist before the data bucket; the log bucket's policy admits the S3 logging service
   * for that source bucket and account only (what CDK writes for `serverAccessLogsBucket`).
   */
  private logAccessTo(source: s3.Bucket, prefix: string): void {
    (source.node.defaultChild as s3.CfnBucket).loggingConfiguration = {
      destinationBucketName: this.accessLogBucket.bucketName,
      logFilePrefix: prefix,
    };
    this.accessLogBucket.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('logging.s3.amazonaws.com')],
        actions: ['s3:PutObject'],
        resources: [this.accessLogBucket.arnForObjects(`${prefix}*`)],
        conditions: {
          ArnLike: { 'aws:SourceArn': source.bucketArn },
          StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID },
        },
      }),
    );
  }
}
