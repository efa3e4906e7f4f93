// The names and rules the CDK app deploys are the ones `iris aws bootstrap` creates: the committed
// contract (kept current by a Rust test) is rebuilt from the synthesised template alone and must
// come back equal, field by field.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { ContractError, loadContract, parseContract, queuePrefix } from '../lib/contract';
import { Json, queuesByName, readContractJson, referencedId, resource, resourcesOfType, servicesByRole, synth } from './helpers';

/** Reads back, from the template only, every field of the contract that is infrastructure. */
function contractFromTemplate(json: Json): Json {
  const services = servicesByRole(json);
  // Which table is which, and the queue prefix, as the containers are told.
  const env = services.ingest.environment;
  const prefix: string = env.IRIS_QUEUE_PREFIX;
  const queues = queuesByName(json);
  const queueNameOfArn = (value: Json) => resource(json, referencedId(value)).Properties.QueueName;

  const [bucketEntry] = resourcesOfType(json, 'AWS::S3::Bucket');
  const bucket = bucketEntry[1].Properties;
  const notifications = bucket.NotificationConfiguration.QueueConfigurations.map((c: Json) => {
    const rules: Json[] = c.Filter?.S3Key?.Rules ?? [];
    const rule = (name: string) => rules.find((r) => r.Name === name)?.Value ?? '';
    return { events: [c.Event], prefix: rule('prefix'), suffix: rule('suffix'), queue: queueNameOfArn(c.Queue) };
  });

  const workQueues = Object.entries(queues)
    .filter(([, q]) => q.properties.RedrivePolicy)
    .map(([name, q]) => ({
      role: name.slice(prefix.length),
      name,
      deadLetterQueue: queueNameOfArn(q.properties.RedrivePolicy.deadLetterTargetArn),
      maxReceiveCount: q.properties.RedrivePolicy.maxReceiveCount,
      visibilityTimeoutSeconds: q.properties.VisibilityTimeout,
      retentionSeconds: q.properties.MessageRetentionPeriod,
    }));

  const table = (name: string) => {
    const found = resourcesOfType(json, 'AWS::DynamoDB::Table').find(([, t]) => t.Properties.TableName === name);
    assert.ok(found, `no table named ${name} (from the containers' environment)`);
    const p = found[1].Properties;
    const type = (attribute: string) => p.AttributeDefinitions.find((a: Json) => a.AttributeName === attribute).AttributeType;
    const keys = (schema: Json[]) => {
      const key = (kind: string) => schema.find((k) => k.KeyType === kind);
      const hash = key('HASH');
      const range = key('RANGE');
      return {
        partitionKey: { name: hash.AttributeName, type: type(hash.AttributeName) },
        ...(range ? { sortKey: { name: range.AttributeName, type: type(range.AttributeName) } } : {}),
      };
    };
    assert.equal(p.TimeToLiveSpecification.Enabled, true, `TTL of ${name} is not enabled`);
    return {
      name: p.TableName,
      ...keys(p.KeySchema),
      indexes: (p.GlobalSecondaryIndexes ?? []).map((i: Json) => ({ name: i.IndexName, ...keys(i.KeySchema) })),
      timeToLiveAttribute: p.TimeToLiveSpecification.AttributeName,
    };
  };

  const [busEntry] = resourcesOfType(json, 'AWS::Events::EventBus');
  const rules = resourcesOfType(json, 'AWS::Events::Rule')
    .map(([, r]) => r.Properties)
    .filter((r) => r.Targets.some((t: Json) => resource(json, referencedId(t.Arn)).Type === 'AWS::SQS::Queue'))
    .map((r) => {
      assert.equal(r.Targets.length, 1, `rule ${r.Name} has more than one target`);
      return { name: r.Name, eventPattern: r.EventPattern, targetQueue: queueNameOfArn(r.Targets[0].Arn) };
    });

  return {
    formatVersion: 1,
    bucket: { name: bucket.BucketName, notifications },
    queues: workQueues,
    jobsTable: table(env.IRIS_JOBS_TABLE),
    connectionsTable: table(env.IRIS_CONNECTIONS_TABLE),
    eventBus: { name: busEntry[1].Properties.Name, rules },
  };
}

/**
 * The committed contract without what is not a deployed resource's setting: S3 assigns
 * notification ids itself (CloudFormation has no field for them), the bus's source and detail types
 * describe the events (checked through the rule patterns and below), and the connections' time to
 * live is how long the application sets it. Every other field, including any the Rust side adds
 * later, must be read back from the template, or this test fails until the app maps it.
 */
function infrastructureFields(contract: Json): Json {
  const copy = structuredClone(contract);
  for (const n of copy.bucket.notifications) delete n.id;
  delete copy.eventBus.source;
  delete copy.eventBus.detailTypes;
  delete copy.connectionsTable.timeToLiveSeconds;
  return copy;
}

function sorted(contract: Json): Json {
  const byJson = (a: Json, b: Json) => JSON.stringify(a).localeCompare(JSON.stringify(b));
  const copy = structuredClone(contract);
  copy.bucket.notifications.sort(byJson);
  copy.queues.sort(byJson);
  copy.eventBus.rules.sort(byJson);
  return copy;
}

describe('names and rules match `iris aws bootstrap` (cdk/pipeline-contract.json)', () => {
  const { json } = synth();

  test('the template, read back, is the contract', () => {
    assert.deepStrictEqual(sorted(contractFromTemplate(json)), sorted(infrastructureFields(readContractJson())));
  });

  test('the event source of the contract is what the rules, the archive and the failure alert match', () => {
    const contract = readContractJson();
    const archives = resourcesOfType(json, 'AWS::Events::Archive');
    assert.equal(archives.length, 1);
    assert.deepStrictEqual(archives[0][1].Properties.EventPattern, { source: [contract.eventBus.source] });
    const failed = resourcesOfType(json, 'AWS::Events::Rule').find(([, r]) => r.Properties.EventPattern['detail-type']);
    assert.ok(failed, 'no JobFailed rule');
    assert.deepStrictEqual(failed[1].Properties.EventPattern, { source: [contract.eventBus.source], 'detail-type': ['JobFailed'] });
    assert.ok(contract.eventBus.detailTypes.includes('JobFailed'));
  });

  test('the read-back is not vacuous: a changed contract no longer matches the template', () => {
    const changed = structuredClone(readContractJson());
    changed.queues[0].maxReceiveCount += 1;
    assert.notDeepStrictEqual(sorted(contractFromTemplate(json)), sorted(infrastructureFields(changed)));
  });
});

describe('contract loading', () => {
  const valid = () => structuredClone(readContractJson());

  test('the committed contract loads, with one queue per role and prefix iris-', () => {
    const contract = loadContract();
    assert.deepStrictEqual(contract.queues.map((q) => q.role).sort(), ['ingest', 'mesh', 'notify', 'segment']);
    assert.equal(queuePrefix(contract.queues), 'iris-');
  });

  const rejects = (name: string, change: (c: Json) => void, message: RegExp) =>
    test(`rejects ${name}`, () => {
      const c = valid();
      change(c);
      assert.throws(() => parseContract(c), (e: unknown) => e instanceof ContractError && message.test(e.message));
    });

  rejects('another format version', (c) => (c.formatVersion = 2), /formatVersion 2 is not supported/);
  rejects('a dead-letter queue the Rust adapter would not find', (c) => (c.queues[1].deadLetterQueue = 'elsewhere'), /must be named iris-segment-dlq/);
  const rename = (c: Json, index: number, name: string) => {
    c.queues[index].name = name;
    c.queues[index].deadLetterQueue = `${name}-dlq`;
  };
  rejects('queues without one shared prefix', (c) => rename(c, 2, 'other-mesh'), /do not share one prefix/);
  rejects('a queue name that does not end with its role', (c) => rename(c, 0, 'iris-intake'), /does not end with its role/);
  rejects('a missing role', (c) => c.queues.pop(), /exactly one notify queue/);
  rejects('a notification to an unknown queue', (c) => (c.bucket.notifications[0].queue = 'iris-nowhere'), /unknown queue iris-nowhere/);
  rejects('an event rule to an unknown queue', (c) => (c.eventBus.rules[0].targetQueue = 'iris-nowhere'), /unknown queue iris-nowhere/);
  rejects('a key type DynamoDB does not have', (c) => (c.jobsTable.partitionKey.type = 'X'), /must be S, N or B/);
  rejects('a redrive policy that leaves the workers no attempt', (c) => (c.queues[0].maxReceiveCount = 1), /at least 2/);

  test('an event pattern key the app cannot express fails the synth', () => {
    const c = valid();
    c.eventBus.rules[0].eventPattern = { source: ['iris.pipeline'], 'replay-name': ['x'] };
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'iris-contract-')), 'contract.json');
    fs.writeFileSync(file, JSON.stringify(c));
    assert.throws(() => synth({}, file), /event pattern key replay-name is not supported/);
  });
});
