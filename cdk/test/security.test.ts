// Security posture, data side: customer-managed keys (what each encrypts, who may use it), bucket
// versioning, access logging and lifecycle, retained and encrypted log groups, and the CloudTrail
// trail of the data bucket's object-level events; the record salt secret and who may read it.
// (The network: network.test.ts.)
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { loadContract, QUEUE_ROLES, QueueRole } from '../lib/contract';
import { RECORD_SALT_LENGTH, RECORD_SALT_VARIABLE } from '../lib/iris-stack';
import { REPO_ROOT } from '../lib/paths';
import {
  ACCOUNT,
  allows,
  Json,
  queuesByName,
  REGION,
  referencedId,
  resolve,
  resource,
  resourcesOfType,
  roleStatements,
  servicesByRole,
  Statement,
  synth,
} from './helpers';

const contract = loadContract();
const { json } = synth();
const services = servicesByRole(json);
const queues = queuesByName(json);
const prefix = contract.queues[0].name.slice(0, -contract.queues[0].role.length);

/** The logical id of the key behind `alias/<prefix><name>`. */
function keyId(name: string): string {
  const aliases = resourcesOfType(json, 'AWS::KMS::Alias').filter(([, a]) => a.Properties.AliasName === `alias/${prefix}${name}`);
  assert.equal(aliases.length, 1, `one alias/${prefix}${name}`);
  return referencedId(aliases[0][1].Properties.TargetKeyId);
}
const KEYS = { data: keyId('data'), messaging: keyId('messaging'), logs: keyId('logs') };
const keyArn = (id: string) => `arn:aws:kms:${REGION}:${ACCOUNT}:key/${id}`;

const buckets = resourcesOfType(json, 'AWS::S3::Bucket');
const [[dataBucketId, dataBucket]] = buckets.filter(([, b]) => b.Properties.BucketName === contract.bucket.name);
const [trailEntry] = resourcesOfType(json, 'AWS::CloudTrail::Trail');
const trailBucketId = referencedId(trailEntry[1].Properties.S3BucketName);
/** The bucket whose policy admits the S3 logging service. */
const [accessLogBucketId] = resourcesOfType(json, 'AWS::S3::BucketPolicy')
  .filter(([, p]) => p.Properties.PolicyDocument.Statement.some((s: Json) => s.Principal?.Service === 'logging.s3.amazonaws.com'))
  .map(([, p]) => referencedId(p.Properties.Bucket));

function keyPolicy(id: string): Statement[] {
  return resource(json, id).Properties.KeyPolicy.Statement;
}
/** The key policy statements whose principal is the AWS service `service` (e.g. s3.amazonaws.com). */
function serviceStatements(id: string, service: string): Statement[] {
  return keyPolicy(id).filter((s: Json) => s.Principal?.Service !== undefined && resolve(json, s.Principal.Service) === service);
}
const list = <T>(v: T | T[]): T[] => (Array.isArray(v) ? v : [v]);
/** Whether a key policy statement's actions cover `action` (wildcards as IAM reads them). */
const covers = (s: Statement, action: string) =>
  list(s.Action).some((a) => new RegExp(`^${a.replace(/\*/g, '.*')}$`, 'i').test(action));
/** The key a resource's KMS property refers to. */
const keyOf = (value: Json) => referencedId(value);

describe('customer-managed keys', () => {
  test('three keys (data, messaging, logs), each rotated by KMS and retained with the data it encrypts', () => {
    const keys = resourcesOfType(json, 'AWS::KMS::Key');
    assert.deepStrictEqual(keys.map(([id]) => id).sort(), Object.values(KEYS).sort());
    for (const [id, key] of keys) {
      assert.equal(key.Properties.EnableKeyRotation, true, `${id} rotation`);
      assert.equal(key.DeletionPolicy, 'Retain', `${id} deletion policy`);
      assert.equal(key.UpdateReplacePolicy, 'Retain', `${id} replace policy`);
      assert.equal(key.Properties.KeySpec ?? 'SYMMETRIC_DEFAULT', 'SYMMETRIC_DEFAULT');
    }
  });

  test('the data bucket is SSE-KMS with the data key and a bucket key', () => {
    const [rule] = dataBucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration;
    assert.equal(rule.ServerSideEncryptionByDefault.SSEAlgorithm, 'aws:kms');
    assert.equal(keyOf(rule.ServerSideEncryptionByDefault.KMSMasterKeyID), KEYS.data);
    assert.equal(rule.BucketKeyEnabled, true);
  });

  test('both tables are encrypted with the data key', () => {
    const tables = resourcesOfType(json, 'AWS::DynamoDB::Table');
    assert.equal(tables.length, 2);
    for (const [id, table] of tables) {
      const sse = table.Properties.SSESpecification;
      assert.deepStrictEqual([sse?.SSEEnabled, sse?.SSEType], [true, 'KMS'], id);
      assert.equal(keyOf(sse.KMSMasterKeyId), KEYS.data, id);
    }
  });

  test('every queue and dead-letter queue is encrypted with the messaging key', () => {
    const names = contract.queues.flatMap((q) => [q.name, q.deadLetterQueue]);
    assert.equal(Object.keys(queues).length, names.length);
    for (const name of names) {
      const { properties } = queues[name];
      assert.equal(properties.SqsManagedSseEnabled, undefined, `${name}: not SSE-SQS`);
      assert.equal(keyOf(properties.KmsMasterKeyId), KEYS.messaging, name);
    }
  });

  test('the alerts topic is encrypted with the messaging key; alarms and the JobFailed rule may publish', () => {
    const [[topicId, topic]] = resourcesOfType(json, 'AWS::SNS::Topic');
    assert.equal(keyOf(topic.Properties.KmsMasterKeyId), KEYS.messaging);
    const [[, policy]] = resourcesOfType(json, 'AWS::SNS::TopicPolicy').filter(([, p]) => p.Properties.Topics[0].Ref === topicId);
    const publishers = policy.Properties.PolicyDocument.Statement.filter((s: Json) => s.Effect === 'Allow').map((s: Json) => s.Principal.Service);
    assert.deepStrictEqual(publishers.sort(), ['cloudwatch.amazonaws.com', 'events.amazonaws.com']);
  });

  test('every log group is encrypted with the logs key', () => {
    const groups = resourcesOfType(json, 'AWS::Logs::LogGroup');
    assert.ok(groups.length >= 6, `${groups.length} log groups`);
    for (const [id, group] of groups) assert.equal(keyOf(group.Properties.KmsKeyId), KEYS.logs, id);
  });

  test('the messaging key lets S3 and EventBridge send to the queues, and CloudWatch alarms publish to the topic', () => {
    for (const service of ['s3.amazonaws.com', 'events.amazonaws.com', 'cloudwatch.amazonaws.com']) {
      const statements = serviceStatements(KEYS.messaging, service);
      for (const action of ['kms:GenerateDataKey', 'kms:Decrypt']) {
        assert.ok(statements.some((s) => s.Effect === 'Allow' && covers(s, action)), `${service} ${action}`);
      }
    }
    // EventBridge only for rules of this account (the queue policies name each rule).
    const [events] = serviceStatements(KEYS.messaging, 'events.amazonaws.com');
    assert.equal(resolve(json, events.Condition.StringEquals['aws:SourceAccount']), ACCOUNT);
  });

  test("the logs key lets CloudWatch Logs (this account's log groups) and the stack's trail use it", () => {
    const [logs] = serviceStatements(KEYS.logs, `logs.${REGION}.amazonaws.com`);
    assert.ok(logs, 'no statement for CloudWatch Logs');
    for (const action of ['kms:Encrypt', 'kms:Decrypt', 'kms:GenerateDataKey', 'kms:ReEncryptFrom', 'kms:DescribeKey']) {
      assert.ok(covers(logs, action), action);
    }
    assert.equal(
      resolve(json, logs.Condition.ArnLike['kms:EncryptionContext:aws:logs:arn']),
      `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:*`,
    );
    const trail = serviceStatements(KEYS.logs, 'cloudtrail.amazonaws.com');
    const encrypt = trail.find((s) => covers(s, 'kms:GenerateDataKey'))!;
    assert.ok(encrypt, 'CloudTrail may not encrypt');
    const trailArn = `arn:aws:cloudtrail:${REGION}:${ACCOUNT}:trail/${trailEntry[1].Properties.TrailName}`;
    assert.equal(resolve(json, encrypt.Condition.StringEquals['aws:SourceArn']), trailArn);
    assert.ok(trail.some((s) => covers(s, 'kms:DescribeKey')), 'CloudTrail may not describe the key');
  });

  test('no other AWS service may use any key, and none may use the data key', () => {
    const expected: Record<string, string[]> = {
      [KEYS.data]: [],
      [KEYS.messaging]: ['cloudwatch.amazonaws.com', 'events.amazonaws.com', 's3.amazonaws.com'],
      [KEYS.logs]: ['cloudtrail.amazonaws.com', `logs.${REGION}.amazonaws.com`],
    };
    for (const [id, services] of Object.entries(expected)) {
      const found = keyPolicy(id)
        .filter((s: Json) => s.Principal?.Service)
        .map((s: Json) => resolve(json, s.Principal.Service));
      assert.deepStrictEqual([...new Set(found)].sort(), services.sort(), id);
      // And no principal other than the account (IAM delegation) and those services.
      for (const s of keyPolicy(id) as Json[]) {
        if (s.Principal.Service) continue;
        assert.equal(resolve(json, s.Principal.AWS), `arn:aws:iam::${ACCOUNT}:root`, id);
      }
    }
  });
});

describe('key grants: every principal can use the keys behind what it reads and writes', () => {
  const taskRole = (role: QueueRole) => roleStatements(json, services[role].taskRoleId);
  const lambdaId = resourcesOfType(json, 'AWS::Lambda::Function').find(([, f]) => f.Properties.Runtime === 'provided.al2023')![0];
  const lambdaRole = roleStatements(json, referencedId(resource(json, lambdaId).Properties.Role), { ignoreManagedPolicies: true });
  /** The kms:ViaService values of the statements that allow `action` on `key`. */
  const viaServices = (statements: Statement[], action: string, key: string): string[] =>
    statements
      .filter((s) => s.Effect === 'Allow' && allows(json, [s], action, keyArn(key)))
      .flatMap((s) => list(s.Condition?.StringEquals?.['kms:ViaService'] ?? ['(any)']).map((v: Json) => resolve(json, v)))
      .sort();
  const via = (...names: string[]) => names.map((n) => `${n}.${REGION}.amazonaws.com`).sort();

  test('each task role: Decrypt and GenerateDataKey on the messaging key, through SQS only', () => {
    for (const role of QUEUE_ROLES) {
      for (const action of ['kms:Decrypt', 'kms:GenerateDataKey']) {
        assert.deepStrictEqual(viaServices(taskRole(role), action, KEYS.messaging), via('sqs'), `${role} ${action}`);
      }
    }
  });

  test('ingest, segment, mesh: the data key through S3 and DynamoDB; notify and the Lambda through DynamoDB only', () => {
    const expected: Array<[string, Statement[], string[]]> = [
      ['ingest', taskRole('ingest'), via('s3', 'dynamodb')],
      ['segment', taskRole('segment'), via('s3', 'dynamodb')],
      ['mesh', taskRole('mesh'), via('s3', 'dynamodb')],
      ['notify', taskRole('notify'), via('dynamodb')],
      ['notify-routes Lambda', lambdaRole, via('dynamodb')],
    ];
    for (const [name, statements, services] of expected) {
      for (const action of ['kms:Decrypt', 'kms:GenerateDataKey', 'kms:Encrypt', 'kms:DescribeKey']) {
        assert.deepStrictEqual(viaServices(statements, action, KEYS.data), services, `${name} ${action}`);
      }
    }
  });

  test('no task role or Lambda may use the logs key, or any key directly', () => {
    for (const [name, statements] of [...QUEUE_ROLES.map((r) => [r, taskRole(r)] as const), ['lambda', lambdaRole] as const]) {
      assert.deepStrictEqual(viaServices(statements, 'kms:Decrypt', KEYS.logs), [], `${name}: logs key`);
      for (const s of statements.filter((s) => list(s.Action).some((a) => a.startsWith('kms:')))) {
        assert.ok(s.Condition?.StringEquals?.['kms:ViaService'], `${name}: ${s.Sid} allows KMS without kms:ViaService`);
      }
    }
  });

  test('what a role may receive or send, read or write, it may also decrypt or encrypt (derived from its permissions)', () => {
    const bucketKey = keyOf(dataBucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.KMSMasterKeyID);
    for (const role of QUEUE_ROLES) {
      const statements = taskRole(role);
      const needs = (action: string, key: string, why: string) =>
        assert.ok(viaServices(statements, action, key).length > 0, `${role}: ${why} but no ${action} on its key`);
      for (const [name, { properties }] of Object.entries(queues)) {
        const arn = `arn:aws:sqs:${REGION}:${ACCOUNT}:${name}`;
        if (allows(json, statements, 'sqs:ReceiveMessage', arn)) needs('kms:Decrypt', keyOf(properties.KmsMasterKeyId), `receives from ${name}`);
        if (allows(json, statements, 'sqs:SendMessage', arn)) needs('kms:GenerateDataKey', keyOf(properties.KmsMasterKeyId), `sends to ${name}`);
      }
      for (const key of ['uploads/u/a.nii.gz', 'jobs/j/volume.nii.gz', 'models/m.onnx']) {
        const arn = `arn:aws:s3:::${contract.bucket.name}/${key}`;
        if (allows(json, statements, 's3:GetObject', arn)) needs('kms:Decrypt', bucketKey, `reads ${key}`);
        if (allows(json, statements, 's3:PutObject', arn)) {
          // Multipart uploads (above 16 MiB) also decrypt the parts' data key.
          needs('kms:GenerateDataKey', bucketKey, `writes ${key}`);
          needs('kms:Decrypt', bucketKey, `writes ${key} in parts`);
        }
      }
      for (const [, table] of resourcesOfType(json, 'AWS::DynamoDB::Table')) {
        const arn = `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${table.Properties.TableName}`;
        const key = keyOf(table.Properties.SSESpecification.KMSMasterKeyId);
        if (allows(json, statements, 'dynamodb:GetItem', arn)) needs('kms:Decrypt', key, `reads ${table.Properties.TableName}`);
        if (allows(json, statements, 'dynamodb:UpdateItem', arn)) needs('kms:GenerateDataKey', key, `writes ${table.Properties.TableName}`);
      }
    }
  });
});

describe('buckets: versioning, access logs, lifecycle', () => {
  test('the data bucket is versioned', () => {
    assert.deepStrictEqual(dataBucket.Properties.VersioningConfiguration, { Status: 'Enabled' });
  });

  test('the data bucket expires uploads/ and jobs/, noncurrent versions and expired delete markers, and aborts stale uploads', () => {
    const rules: Json[] = dataBucket.Properties.LifecycleConfiguration.Rules;
    const enabled = rules.filter((r) => r.Status === 'Enabled');
    const expiry = (p: string) => enabled.find((r) => r.Prefix === p && r.ExpirationInDays > 0)?.ExpirationInDays;
    assert.equal(expiry('uploads/'), 30);
    assert.equal(expiry('jobs/'), 90);
    // Noncurrent versions (from overwrites, deletes and the expiries above) go everywhere in the bucket.
    const noncurrent = enabled.filter((r) => r.Prefix === undefined && r.NoncurrentVersionExpiration?.NoncurrentDays > 0);
    assert.equal(noncurrent.length, 1);
    assert.ok(noncurrent[0].NoncurrentVersionExpiration.NoncurrentDays <= 90);
    assert.ok(enabled.some((r) => r.Prefix === undefined && r.ExpiredObjectDeleteMarker === true), 'expired delete markers stay');
    assert.ok(enabled.some((r) => r.Prefix === undefined && r.AbortIncompleteMultipartUpload?.DaysAfterInitiation > 0));
  });

  test('the data bucket logs every request to the access-log bucket, which admits the S3 logging service for it only', () => {
    assert.ok(accessLogBucketId, 'no access-log bucket');
    assert.notEqual(accessLogBucketId, dataBucketId);
    assert.equal(referencedId(dataBucket.Properties.LoggingConfiguration?.DestinationBucketName), accessLogBucketId);
    assert.equal(dataBucket.Properties.LoggingConfiguration.LogFilePrefix, 'data-bucket/');
    const [[, policy]] = resourcesOfType(json, 'AWS::S3::BucketPolicy').filter(([, p]) => referencedId(p.Properties.Bucket) === accessLogBucketId);
    const fromLogging = policy.Properties.PolicyDocument.Statement.filter(
      (s: Json) => s.Principal?.Service === 'logging.s3.amazonaws.com' && referencedId(s.Condition.ArnLike['aws:SourceArn']) === dataBucketId,
    );
    assert.equal(fromLogging.length, 1);
    assert.equal(fromLogging[0].Action, 's3:PutObject');
    assert.deepStrictEqual(
      list(fromLogging[0].Resource).map((r: Json) => JSON.stringify(r)),
      [JSON.stringify({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [accessLogBucketId, 'Arn'] }, '/data-bucket/*']] })],
    );
    assert.equal(resolve(json, fromLogging[0].Condition.StringEquals['aws:SourceAccount']), ACCOUNT);
  });

  test('the access-log bucket: SSE-S3 (S3 delivers access logs to no other), its own expiry, no logging into itself', () => {
    const props = resource(json, accessLogBucketId).Properties;
    assert.deepStrictEqual(props.BucketEncryption.ServerSideEncryptionConfiguration, [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }]);
    assert.ok(props.LifecycleConfiguration.Rules.some((r: Json) => r.Status === 'Enabled' && r.ExpirationInDays >= 90 && r.Prefix === undefined));
    assert.equal(props.LoggingConfiguration, undefined);
  });

  test('the trail bucket: SSE-KMS with the logs key, its own expiry (six years), its requests logged too', () => {
    const props = resource(json, trailBucketId).Properties;
    const [rule] = props.BucketEncryption.ServerSideEncryptionConfiguration;
    assert.equal(rule.ServerSideEncryptionByDefault.SSEAlgorithm, 'aws:kms');
    assert.equal(keyOf(rule.ServerSideEncryptionByDefault.KMSMasterKeyID), KEYS.logs);
    assert.ok(props.LifecycleConfiguration.Rules.some((r: Json) => r.Status === 'Enabled' && r.ExpirationInDays >= 6 * 365));
    assert.equal(referencedId(props.LoggingConfiguration.DestinationBucketName), accessLogBucketId);
  });

  test('every bucket blocks public access, is owner-enforced, denies requests without TLS, and is retained', () => {
    assert.equal(buckets.length, 3);
    for (const [id, bucket] of buckets) {
      assert.deepStrictEqual(
        bucket.Properties.PublicAccessBlockConfiguration,
        { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
        id,
      );
      assert.deepStrictEqual(bucket.Properties.OwnershipControls, { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] }, id);
      assert.equal(bucket.DeletionPolicy, 'Retain', id);
      const policies = resourcesOfType(json, 'AWS::S3::BucketPolicy').filter(([, p]) => referencedId(p.Properties.Bucket) === id);
      assert.equal(policies.length, 1, `${id}: one bucket policy`);
      const tlsOnly = policies[0][1].Properties.PolicyDocument.Statement.some(
        (s: Json) => s.Effect === 'Deny' && s.Principal?.AWS === '*' && s.Action === 's3:*' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false',
      );
      assert.ok(tlsOnly, `${id}: no TLS-only deny`);
    }
  });
});

describe('the record salt secret (IRIS_RECORD_SALT of ingest)', () => {
  const secrets = resourcesOfType(json, 'AWS::SecretsManager::Secret');
  const [[saltId, salt]] = secrets;
  const saltArn = resolve(json, { Ref: saltId });
  const taskRole = (role: QueueRole) => roleStatements(json, services[role].taskRoleId);
  const executionRole = (role: QueueRole) => roleStatements(json, services[role].executionRoleId);
  /** The kms:ViaService values of the statements that allow `action` on `key` (as in the key grants above). */
  const viaServices = (statements: Statement[], action: string, key: string): string[] =>
    statements
      .filter((s) => s.Effect === 'Allow' && allows(json, [s], action, keyArn(key)))
      .flatMap((s) => list(s.Condition?.StringEquals?.['kms:ViaService'] ?? ['(any)']).map((v: Json) => resolve(json, v)))
      .sort();

  test('one secret: generated by Secrets Manager at deployment (never in the template), encrypted with the data key, retained', () => {
    assert.equal(secrets.length, 1);
    const props = salt.Properties;
    assert.equal(props.Name, `${prefix}record-salt`);
    assert.equal(props.SecretString, undefined, 'the salt must not be in the template');
    assert.deepStrictEqual(props.GenerateSecretString, { PasswordLength: RECORD_SALT_LENGTH, ExcludePunctuation: true, IncludeSpace: false });
    assert.ok(RECORD_SALT_LENGTH >= 32, `a ${RECORD_SALT_LENGTH}-character salt is too short`);
    assert.equal(keyOf(props.KmsKeyId), KEYS.data);
    // Losing it would leave every digest in the job records unmatchable.
    assert.equal(salt.DeletionPolicy, 'Retain');
    assert.equal(salt.UpdateReplacePolicy, 'Retain');
    assert.equal(props.ReplicaRegions, undefined);
  });

  test('the Rust config reads it under that name', () => {
    const configSource = fs.readFileSync(path.join(REPO_ROOT, 'shared', 'core', 'src', 'config.rs'), 'utf8');
    assert.ok(configSource.includes(`"${RECORD_SALT_VARIABLE}"`), `config.rs does not read ${RECORD_SALT_VARIABLE}`);
  });

  test('only the ingest task definition has IRIS_RECORD_SALT, as an ECS secret (ValueFrom) of that secret', () => {
    assert.deepStrictEqual(services.ingest.secrets, { [RECORD_SALT_VARIABLE]: { Ref: saltId } });
    for (const role of QUEUE_ROLES.filter((r) => r !== 'ingest')) assert.deepStrictEqual(services[role].secrets, {}, role);
    // Every container of every task definition, whether or not a service runs it.
    const withSalt = resourcesOfType(json, 'AWS::ECS::TaskDefinition').flatMap(([id, td]) =>
      (td.Properties.ContainerDefinitions as Json[])
        .filter((c) => (c.Secrets ?? []).some((e: Json) => e.Name === RECORD_SALT_VARIABLE))
        .map(() => id),
    );
    assert.deepStrictEqual(withSalt, [services.ingest.taskDefinitionId]);
  });

  test('no container or function has IRIS_RECORD_SALT as a plain environment value, and no value of the secret is in the template', () => {
    for (const [id, td] of resourcesOfType(json, 'AWS::ECS::TaskDefinition')) {
      for (const c of td.Properties.ContainerDefinitions as Json[]) {
        assert.ok(!(c.Environment ?? []).some((e: Json) => e.Name === RECORD_SALT_VARIABLE), `${id}: ${RECORD_SALT_VARIABLE} in plain environment`);
      }
    }
    for (const [id, fn] of resourcesOfType(json, 'AWS::Lambda::Function')) {
      assert.equal(fn.Properties.Environment?.Variables?.[RECORD_SALT_VARIABLE], undefined, id);
    }
    // No dynamic reference ({{resolve:secretsmanager:…}}) would put the value where CloudFormation shows it.
    assert.ok(!JSON.stringify(json).includes('{{resolve:secretsmanager'), 'a dynamic reference to a secret');
  });

  test("only ingest's execution role may read it: GetSecretValue on it, the data key through Secrets Manager only", () => {
    assert.ok(allows(json, executionRole('ingest'), 'secretsmanager:GetSecretValue', saltArn));
    assert.deepStrictEqual(viaServices(executionRole('ingest'), 'kms:Decrypt', KEYS.data), [`secretsmanager.${REGION}.amazonaws.com`]);
    for (const action of ['kms:Encrypt', 'kms:GenerateDataKey', 'kms:ReEncryptFrom']) {
      assert.deepStrictEqual(viaServices(executionRole('ingest'), action, KEYS.data), [], `ingest execution role: ${action}`);
    }
    // Not the task role the worker runs under, nor any other role of the stack.
    const readers = resourcesOfType(json, 'AWS::IAM::Role')
      .filter(([id]) => allows(json, roleStatements(json, id, { ignoreManagedPolicies: true }), 'secretsmanager:GetSecretValue', saltArn))
      .map(([id]) => id);
    assert.deepStrictEqual(readers, [services.ingest.executionRoleId]);
    for (const role of QUEUE_ROLES) {
      assert.ok(!allows(json, taskRole(role), 'secretsmanager:GetSecretValue', saltArn), `${role} task role`);
      assert.ok(!viaServices(taskRole(role), 'kms:Decrypt', KEYS.data).includes(`secretsmanager.${REGION}.amazonaws.com`), `${role} task role`);
      if (role !== 'ingest') assert.deepStrictEqual(viaServices(executionRole(role), 'kms:Decrypt', KEYS.data), [], `${role} execution role`);
    }
    // The evaluator sees the grant's limits: another secret of the account is not readable.
    assert.ok(!allows(json, executionRole('ingest'), 'secretsmanager:GetSecretValue', saltArn.replace('record-salt', 'other')));
  });

  test('the data key policy admits Secrets Manager only on behalf of the account (kms:ViaService), and names no role', () => {
    const statements = keyPolicy(KEYS.data) as Json[];
    for (const s of statements) assert.equal(resolve(json, s.Principal.AWS), `arn:aws:iam::${ACCOUNT}:root`);
    // Besides CDK's default statement (the account delegates through IAM), only Secrets Manager's.
    const conditional = statements.filter((s) => s.Condition !== undefined);
    assert.equal(conditional.length, statements.length - 1);
    for (const s of conditional) {
      assert.deepStrictEqual(Object.keys(s.Condition), ['StringEquals']);
      assert.equal(resolve(json, s.Condition.StringEquals['kms:ViaService']), `secretsmanager.${REGION}.amazonaws.com`);
    }
  });
});

describe('log groups', () => {
  const groups = resourcesOfType(json, 'AWS::Logs::LogGroup');

  test('every log group is retained with the stack (deletion and replacement) and keeps its events a set time', () => {
    for (const [id, group] of groups) {
      assert.equal(group.DeletionPolicy, 'Retain', id);
      assert.equal(group.UpdateReplacePolicy, 'Retain', id);
      assert.ok(group.Properties.RetentionInDays >= 365, `${id}: retention ${group.Properties.RetentionInDays}`);
    }
  });

  test('every container and every Lambda with code of ours logs to one of them', () => {
    const ids = new Set(groups.map(([id]) => id));
    for (const role of QUEUE_ROLES) {
      const group = services[role].container.LogConfiguration.Options['awslogs-group'];
      assert.ok(ids.has(referencedId(group)), `${role} logs to ${JSON.stringify(group)}`);
    }
    for (const [id, fn] of resourcesOfType(json, 'AWS::Lambda::Function')) {
      // CDK's default-security-group provider logs to the group Lambda creates (no data of ours).
      if (id.startsWith('CustomVpcRestrictDefaultSG')) continue;
      assert.ok(ids.has(referencedId(fn.Properties.LoggingConfig?.LogGroup)), `${id} has no log group of the stack`);
    }
  });
});

describe('CloudTrail', () => {
  const props = trailEntry[1].Properties;

  test("a trail logs every read and write of the data bucket's objects", () => {
    assert.equal(props.IsLogging, true);
    const selectors: Json[] = props.EventSelectors;
    const onBucket = selectors.filter((s) =>
      s.DataResources?.some(
        (r: Json) => r.Type === 'AWS::S3::Object' && list(r.Values).some((v: Json) => resolve(json, v) === `arn:aws:s3:::${contract.bucket.name}/`),
      ),
    );
    assert.equal(onBucket.length, 1, 'one selector for the data bucket');
    assert.equal(onBucket[0].ReadWriteType, 'All');
  });

  test('with log file validation, into the trail bucket, encrypted with the logs key', () => {
    assert.equal(props.EnableLogFileValidation, true);
    assert.equal(referencedId(props.S3BucketName), trailBucketId);
    assert.equal(keyOf(props.KMSKeyId), KEYS.logs);
    assert.notEqual(trailBucketId, dataBucketId);
    // CloudTrail may write there (CDK's statements), and the trail waits for that policy.
    const [[policyId, policy]] = resourcesOfType(json, 'AWS::S3::BucketPolicy').filter(([, p]) => referencedId(p.Properties.Bucket) === trailBucketId);
    assert.ok(policy.Properties.PolicyDocument.Statement.some((s: Json) => s.Principal?.Service === 'cloudtrail.amazonaws.com' && s.Action === 's3:PutObject'));
    assert.ok(trailEntry[1].DependsOn.includes(policyId));
  });
});
