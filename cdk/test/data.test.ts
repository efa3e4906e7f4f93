// The data plane: bucket, queues, tables, event bus, alarms.
import * as assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Match } from 'aws-cdk-lib/assertions';
import { loadContract } from '../lib/contract';
import { Json, queuesByName, referencedId, resolve, resource, resourcesOfType, synth } from './helpers';

const contract = loadContract();
const { template, json } = synth();
const queues = queuesByName(json);
const FOURTEEN_DAYS = 14 * 24 * 3600;

/** The statements of the queue policy that governs the queue `logicalId`. */
function queuePolicyStatements(logicalId: string): Json[] {
  const policies = resourcesOfType(json, 'AWS::SQS::QueuePolicy').filter(([, p]) =>
    p.Properties.Queues.some((q: Json) => q.Ref === logicalId),
  );
  assert.equal(policies.length, 1, `queue ${logicalId} should have exactly one policy`);
  return policies[0][1].Properties.PolicyDocument.Statement;
}

const isTlsOnlyDeny = (s: Json) =>
  s.Effect === 'Deny' && s.Principal?.AWS === '*' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false';

describe('resources', () => {
  test('counts', () => {
    const expected: Record<string, number> = {
      'AWS::S3::Bucket': 3, // data, access logs, CloudTrail log files
      'AWS::KMS::Key': 3, // data, messaging, logs
      'AWS::SecretsManager::Secret': 1, // the record salt
      'AWS::CloudTrail::Trail': 1,
      'AWS::SQS::Queue': 2 * contract.queues.length,
      'AWS::DynamoDB::Table': 2,
      'AWS::Events::EventBus': 1,
      'AWS::Events::Rule': contract.eventBus.rules.length + 1, // + the JobFailed alert rule
      'AWS::Events::Archive': 1,
      'AWS::SNS::Topic': 1,
      'AWS::ECS::Cluster': 1,
      'AWS::ECS::Service': 4,
      'AWS::ECS::TaskDefinition': 4,
      'AWS::ECS::CapacityProvider': 2,
      'AWS::AutoScaling::AutoScalingGroup': 2,
      'AWS::ApplicationAutoScaling::ScalableTarget': 4,
      'AWS::ApplicationAutoScaling::ScalingPolicy': 8,
      'AWS::CloudWatch::Alarm': 4 + 4 + 8, // dead letters, message age, scaling (out + idle) per service
      'AWS::ApiGatewayV2::Api': 1,
      'AWS::ApiGatewayV2::Route': 6,
      'AWS::ApiGatewayV2::Stage': 1,
      'AWS::EC2::NatGateway': 0,
    };
    for (const [type, count] of Object.entries(expected)) template.resourceCountIs(type, count);
  });
});

describe('data bucket', () => {
  // The one with notifications (the others are audit buckets: security.test.ts).
  const [[bucketId, bucket]] = resourcesOfType(json, 'AWS::S3::Bucket').filter(([, b]) => b.Properties.NotificationConfiguration);
  const props = bucket.Properties;

  test('takes its name from the contract', () => {
    assert.equal(props.BucketName, contract.bucket.name);
  });

  test('is encrypted (SSE-KMS, customer-managed key, bucket key) and blocks every kind of public access', () => {
    const [rule] = props.BucketEncryption.ServerSideEncryptionConfiguration;
    assert.equal(rule.ServerSideEncryptionByDefault.SSEAlgorithm, 'aws:kms');
    assert.equal(resource(json, referencedId(rule.ServerSideEncryptionByDefault.KMSMasterKeyID)).Type, 'AWS::KMS::Key');
    assert.equal(rule.BucketKeyEnabled, true);
    assert.deepStrictEqual(props.PublicAccessBlockConfiguration, {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
  });

  test('its policy denies every request without TLS, and TLS older than 1.2', () => {
    const [[, policy]] = resourcesOfType(json, 'AWS::S3::BucketPolicy').filter(([, p]) => referencedId(p.Properties.Bucket) === bucketId);
    const statements: Json[] = policy.Properties.PolicyDocument.Statement;
    const tlsOnly = statements.find(isTlsOnlyDeny);
    assert.ok(tlsOnly, 'no TLS-only deny statement');
    assert.equal(tlsOnly.Action, 's3:*');
    const resources = tlsOnly.Resource.map((r: Json) => resolve(json, r)).sort();
    assert.deepStrictEqual(resources, [`arn:aws:s3:::${contract.bucket.name}`, `arn:aws:s3:::${contract.bucket.name}/*`]);
    assert.ok(
      statements.some((s) => s.Effect === 'Deny' && s.Condition?.NumericLessThan?.['s3:TlsVersion'] === 1.2),
      'no minimum TLS version statement',
    );
  });

  test('expires uploads after 30 days and job outputs under jobs/ after 90 days, and nothing else', () => {
    const rules: Json[] = props.LifecycleConfiguration.Rules;
    const expiring = rules.filter((r) => r.ExpirationInDays !== undefined);
    assert.deepStrictEqual(
      expiring.map((r) => [r.Prefix, r.ExpirationInDays, r.Status]),
      [
        ['uploads/', 30, 'Enabled'],
        ['jobs/', 90, 'Enabled'],
      ],
    );
    // Uploads outlive the longest a message can wait for ingest (queue retention).
    assert.ok(30 * 24 * 3600 > Math.max(...contract.queues.map((q) => q.retentionSeconds)));
  });

  test('notifies the queues with exactly the contract\'s prefix/suffix filters', () => {
    const actual = props.NotificationConfiguration.QueueConfigurations.map((c: Json) => ({
      event: c.Event,
      rules: c.Filter.S3Key.Rules,
      queue: resource(json, referencedId(c.Queue)).Properties.QueueName,
    }));
    const expected = contract.bucket.notifications.flatMap((n) =>
      n.events.map((event) => ({
        event,
        rules: [
          ...(n.prefix ? [{ Name: 'prefix', Value: n.prefix }] : []),
          ...(n.suffix ? [{ Name: 'suffix', Value: n.suffix }] : []),
        ],
        queue: n.queue,
      })),
    );
    assert.deepStrictEqual(actual, expected);
    // The Rust side scopes segment and mesh to jobs/ because S3 rejects overlapping rules.
    const jobsRules = actual.filter((a: Json) => a.rules.some((r: Json) => r.Name === 'prefix' && r.Value === 'jobs/'));
    assert.deepStrictEqual(jobsRules.map((a: Json) => a.queue).sort(), ['iris-mesh', 'iris-segment']);
  });

  test('each notified queue lets this bucket (and only it) send, and exists with its policy before the bucket', () => {
    const notified = new Set<string>(contract.bucket.notifications.map((n) => n.queue));
    for (const name of notified) {
      const { id } = queues[name];
      const statements = queuePolicyStatements(id);
      const fromS3 = statements.filter((s) => s.Principal?.Service === 's3.amazonaws.com');
      assert.equal(fromS3.length, 1, `${name}: one statement for S3`);
      assert.equal(fromS3[0].Action, 'sqs:SendMessage');
      assert.equal(resolve(json, fromS3[0].Condition.ArnEquals['aws:SourceArn']), `arn:aws:s3:::${contract.bucket.name}`);
      assert.ok(fromS3[0].Condition.StringEquals['aws:SourceAccount'], `${name}: no source account condition`);
      const policyId = resourcesOfType(json, 'AWS::SQS::QueuePolicy').find(([, p]) => p.Properties.Queues[0].Ref === id)![0];
      assert.ok(bucket.DependsOn.includes(policyId), `the bucket must be created after ${policyId}`);
    }
    // Queues that S3 does not feed give it no access.
    for (const q of contract.queues.filter((q) => !notified.has(q.name))) {
      assert.ok(!queuePolicyStatements(queues[q.name].id).some((s) => s.Principal?.Service === 's3.amazonaws.com'));
    }
  });
});

describe('queues', () => {
  for (const q of contract.queues) {
    test(`${q.name}: dead-letter queue ${q.deadLetterQueue} after ${q.maxReceiveCount} receives, settings from the contract`, () => {
      const queue = queues[q.name];
      const deadLetter = queues[q.deadLetterQueue];
      assert.ok(queue && deadLetter, 'queue and dead-letter queue exist under the contract\'s names');
      assert.deepStrictEqual(queue.properties.RedrivePolicy, {
        deadLetterTargetArn: { 'Fn::GetAtt': [deadLetter.id, 'Arn'] },
        maxReceiveCount: q.maxReceiveCount,
      });
      assert.equal(queue.properties.VisibilityTimeout, q.visibilityTimeoutSeconds);
      assert.equal(queue.properties.MessageRetentionPeriod, q.retentionSeconds);
      assert.equal(deadLetter.properties.MessageRetentionPeriod, q.retentionSeconds);
      assert.equal(q.retentionSeconds, FOURTEEN_DAYS);
      assert.equal(deadLetter.properties.RedrivePolicy, undefined, 'a dead-letter queue has no redrive of its own');
      for (const { id, properties } of [queue, deadLetter]) {
        // Encrypted with the customer-managed messaging key (security.test.ts checks which one).
        assert.equal(resource(json, referencedId(properties.KmsMasterKeyId)).Type, 'AWS::KMS::Key', `${properties.QueueName} is encrypted`);
        assert.ok(queuePolicyStatements(id).some(isTlsOnlyDeny), `${properties.QueueName} denies requests without TLS`);
      }
    });
  }

  test('every queue in the template is a contract queue or its dead-letter queue', () => {
    const names = contract.queues.flatMap((q) => [q.name, q.deadLetterQueue]).sort();
    assert.deepStrictEqual(Object.keys(queues).sort(), names);
  });
});

describe('tables', () => {
  const tables = Object.fromEntries(resourcesOfType(json, 'AWS::DynamoDB::Table').map(([, t]) => [t.Properties.TableName, t.Properties]));

  test('jobs table: PK jobId, GSI userId-createdAt with a NUMBER sort key, TTL expiresAt, point-in-time recovery', () => {
    const t = tables[contract.jobsTable.name];
    assert.deepStrictEqual(t.KeySchema, [{ AttributeName: 'jobId', KeyType: 'HASH' }]);
    assert.deepStrictEqual(
      t.AttributeDefinitions.sort((a: Json, b: Json) => a.AttributeName.localeCompare(b.AttributeName)),
      [
        { AttributeName: 'createdAt', AttributeType: 'N' },
        { AttributeName: 'jobId', AttributeType: 'S' },
        { AttributeName: 'userId', AttributeType: 'S' },
      ],
    );
    assert.deepStrictEqual(t.GlobalSecondaryIndexes, [
      {
        IndexName: 'userId-createdAt',
        KeySchema: [
          { AttributeName: 'userId', KeyType: 'HASH' },
          { AttributeName: 'createdAt', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'ALL' },
      },
    ]);
    assert.deepStrictEqual(t.TimeToLiveSpecification, { AttributeName: 'expiresAt', Enabled: true });
    assert.deepStrictEqual(t.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
    assert.equal(t.BillingMode, 'PAY_PER_REQUEST');
  });

  test('connections table: PK connectionId, SK item, GSI jobId-index, TTL expiresAt', () => {
    const t = tables[contract.connectionsTable.name];
    assert.deepStrictEqual(t.KeySchema, [
      { AttributeName: 'connectionId', KeyType: 'HASH' },
      { AttributeName: 'item', KeyType: 'RANGE' },
    ]);
    assert.deepStrictEqual(t.GlobalSecondaryIndexes, [
      { IndexName: 'jobId-index', KeySchema: [{ AttributeName: 'jobId', KeyType: 'HASH' }], Projection: { ProjectionType: 'ALL' } },
    ]);
    assert.deepStrictEqual(t.TimeToLiveSpecification, { AttributeName: 'expiresAt', Enabled: true });
    assert.equal(t.BillingMode, 'PAY_PER_REQUEST');
  });

  test('tables survive a stack deletion', () => {
    for (const [, t] of resourcesOfType(json, 'AWS::DynamoDB::Table')) assert.equal(t.DeletionPolicy, 'Retain');
  });
});

describe('event bus', () => {
  test('named from the contract, with an archive of every pipeline event', () => {
    template.hasResourceProperties('AWS::Events::EventBus', { Name: contract.eventBus.name });
    const [[busId]] = resourcesOfType(json, 'AWS::Events::EventBus');
    const [[, archive]] = resourcesOfType(json, 'AWS::Events::Archive');
    assert.equal(referencedId(archive.Properties.SourceArn), busId);
    assert.ok(archive.Properties.RetentionDays > 0);
  });

  for (const rule of contract.eventBus.rules) {
    test(`rule ${rule.name}: the contract's pattern, on the bus, to ${rule.targetQueue} (undeliverable events to its dead-letter queue)`, () => {
      const [[ruleId, found]] = resourcesOfType(json, 'AWS::Events::Rule').filter(([, r]) => r.Properties.Name === rule.name);
      const [[busId]] = resourcesOfType(json, 'AWS::Events::EventBus');
      assert.equal(referencedId(found.Properties.EventBusName), busId);
      assert.deepStrictEqual(found.Properties.EventPattern, rule.eventPattern);
      assert.equal(found.Properties.Targets.length, 1);
      const target = found.Properties.Targets[0];
      assert.equal(resolve(json, target.Arn), `arn:aws:sqs:us-east-1:111111111111:${rule.targetQueue}`);
      assert.equal(resolve(json, target.DeadLetterConfig.Arn), `arn:aws:sqs:us-east-1:111111111111:${rule.targetQueue}-dlq`);
      // The target queue accepts messages from this rule only.
      const fromEvents = queuePolicyStatements(queues[rule.targetQueue].id).filter((s) => s.Principal?.Service === 'events.amazonaws.com');
      assert.equal(fromEvents.length, 1);
      assert.deepStrictEqual(fromEvents[0].Condition, { ArnEquals: { 'aws:SourceArn': { 'Fn::GetAtt': [ruleId, 'Arn'] } } });
    });
  }

  test('JobFailed events go to the alerts topic', () => {
    const [[topicId]] = resourcesOfType(json, 'AWS::SNS::Topic');
    template.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: { source: [contract.eventBus.source], 'detail-type': ['JobFailed'] },
      Targets: [Match.objectLike({ Arn: { Ref: topicId } })],
    });
    template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Principal: { Service: 'events.amazonaws.com' }, Action: 'sns:Publish' })]) },
    });
  });
});

describe('alarms', () => {
  const alarms = resourcesOfType(json, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
  const [[topicId]] = resourcesOfType(json, 'AWS::SNS::Topic');
  const onQueue = (metric: string, queueName: string) =>
    alarms.filter(
      (a) =>
        a.MetricName === metric &&
        a.Namespace === 'AWS/SQS' &&
        a.Dimensions?.length === 1 &&
        resolve(json, a.Dimensions[0].Value) === queueName &&
        a.AlarmActions?.some((action: Json) => action.Ref === topicId),
    );

  for (const q of contract.queues) {
    test(`${q.deadLetterQueue}: alerts as soon as it holds a message`, () => {
      const found = onQueue('ApproximateNumberOfMessagesVisible', q.deadLetterQueue);
      assert.equal(found.length, 1);
      assert.equal(found[0].Threshold, 0);
      assert.equal(found[0].ComparisonOperator, 'GreaterThanThreshold');
      assert.equal(found[0].EvaluationPeriods, 1);
    });
    test(`${q.name}: alerts when its oldest message is too old`, () => {
      const found = onQueue('ApproximateAgeOfOldestMessage', q.name);
      assert.equal(found.length, 1);
      assert.equal(found[0].ComparisonOperator, 'GreaterThanThreshold');
      assert.ok(found[0].Threshold >= 600 && found[0].Threshold <= 3600, `threshold ${found[0].Threshold}s`);
    });
  }
});
