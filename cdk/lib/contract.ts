// The pipeline's resource contract (cdk/pipeline-contract.json, printed by `iris aws contract`):
// every name, notification rule, queue setting, table key and event rule that `iris aws bootstrap`
// creates. The CDK app takes all of those from here, never from literals of its own, so the two
// ways of creating the pipeline cannot drift apart; a Rust test keeps the file current.
import * as fs from 'fs';
import { CONTRACT_PATH } from './paths';

/** The queue roles of the Rust code (`QueueRole::ALL`), one queue each. */
export const QUEUE_ROLES = ['ingest', 'segment', 'mesh', 'notify'] as const;
export type QueueRole = (typeof QUEUE_ROLES)[number];

export type AttributeType = 'S' | 'N' | 'B';

export interface KeyAttribute {
  readonly name: string;
  readonly type: AttributeType;
}

export interface IndexContract {
  readonly name: string;
  readonly partitionKey: KeyAttribute;
  readonly sortKey?: KeyAttribute;
}

export interface TableContract {
  readonly name: string;
  readonly partitionKey: KeyAttribute;
  readonly sortKey?: KeyAttribute;
  readonly indexes: readonly IndexContract[];
  readonly timeToLiveAttribute: string;
  /** How long the application sets items to live (informational: the table only names the attribute). */
  readonly timeToLiveSeconds?: number;
}

export interface QueueContract {
  readonly role: QueueRole;
  readonly name: string;
  readonly deadLetterQueue: string;
  readonly maxReceiveCount: number;
  readonly visibilityTimeoutSeconds: number;
  readonly retentionSeconds: number;
}

export interface NotificationContract {
  readonly id: string;
  readonly events: readonly string[];
  readonly prefix: string;
  readonly suffix: string;
  /** A queue name from `queues`. */
  readonly queue: string;
}

export interface EventRuleContract {
  readonly name: string;
  /** An EventBridge event pattern, verbatim. */
  readonly eventPattern: Readonly<Record<string, unknown>>;
  /** A queue name from `queues`. */
  readonly targetQueue: string;
}

export interface PipelineContract {
  readonly formatVersion: 1;
  readonly bucket: { readonly name: string; readonly notifications: readonly NotificationContract[] };
  readonly queues: readonly QueueContract[];
  readonly jobsTable: TableContract;
  readonly connectionsTable: TableContract;
  readonly eventBus: {
    readonly name: string;
    readonly source: string;
    readonly detailTypes: readonly string[];
    readonly rules: readonly EventRuleContract[];
  };
}

export class ContractError extends Error {
  constructor(message: string) {
    super(`pipeline contract: ${message}`);
    this.name = 'ContractError';
  }
}

/** Reads and checks the committed contract. */
export function loadContract(file: string = CONTRACT_PATH): PipelineContract {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ContractError(`cannot read ${file}: ${(error as Error).message}; write it with \`iris aws contract > cdk/pipeline-contract.json\``);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ContractError(`${file} is not JSON: ${(error as Error).message}`);
  }
  return parseContract(value);
}

type Json = Record<string, unknown>;

function object(value: unknown, where: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ContractError(`${where} must be an object`);
  }
  return value as Json;
}

function array(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new ContractError(`${where} must be an array`);
  return value;
}

function string(value: unknown, where: string, options: { allowEmpty?: boolean } = {}): string {
  if (typeof value !== 'string' || (!options.allowEmpty && value.length === 0)) {
    throw new ContractError(`${where} must be a${options.allowEmpty ? '' : ' non-empty'} string`);
  }
  return value;
}

function positiveInteger(value: unknown, where: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ContractError(`${where} must be a positive integer`);
  }
  return value;
}

function keyAttribute(value: unknown, where: string): KeyAttribute {
  const key = object(value, where);
  const type = string(key.type, `${where}.type`);
  if (type !== 'S' && type !== 'N' && type !== 'B') {
    throw new ContractError(`${where}.type must be S, N or B (got ${type})`);
  }
  return { name: string(key.name, `${where}.name`), type };
}

function table(value: unknown, where: string): TableContract {
  const t = object(value, where);
  const indexes = array(t.indexes, `${where}.indexes`).map((entry, i) => {
    const index = object(entry, `${where}.indexes[${i}]`);
    return {
      name: string(index.name, `${where}.indexes[${i}].name`),
      partitionKey: keyAttribute(index.partitionKey, `${where}.indexes[${i}].partitionKey`),
      ...(index.sortKey === undefined ? {} : { sortKey: keyAttribute(index.sortKey, `${where}.indexes[${i}].sortKey`) }),
    };
  });
  return {
    name: string(t.name, `${where}.name`),
    partitionKey: keyAttribute(t.partitionKey, `${where}.partitionKey`),
    ...(t.sortKey === undefined ? {} : { sortKey: keyAttribute(t.sortKey, `${where}.sortKey`) }),
    indexes,
    timeToLiveAttribute: string(t.timeToLiveAttribute, `${where}.timeToLiveAttribute`),
    ...(t.timeToLiveSeconds === undefined
      ? {}
      : { timeToLiveSeconds: positiveInteger(t.timeToLiveSeconds, `${where}.timeToLiveSeconds`) }),
  };
}

/** Checks the shape of a parsed contract and the relations the CDK app relies on. */
export function parseContract(value: unknown): PipelineContract {
  const root = object(value, 'the contract');
  if (root.formatVersion !== 1) {
    throw new ContractError(`formatVersion ${JSON.stringify(root.formatVersion)} is not supported (this app reads version 1)`);
  }

  const queues: QueueContract[] = array(root.queues, 'queues').map((entry, i) => {
    const q = object(entry, `queues[${i}]`);
    const role = string(q.role, `queues[${i}].role`);
    if (!(QUEUE_ROLES as readonly string[]).includes(role)) {
      throw new ContractError(`queues[${i}].role ${role} is not one of ${QUEUE_ROLES.join(', ')}`);
    }
    return {
      role: role as QueueRole,
      name: string(q.name, `queues[${i}].name`),
      deadLetterQueue: string(q.deadLetterQueue, `queues[${i}].deadLetterQueue`),
      maxReceiveCount: positiveInteger(q.maxReceiveCount, `queues[${i}].maxReceiveCount`),
      visibilityTimeoutSeconds: positiveInteger(q.visibilityTimeoutSeconds, `queues[${i}].visibilityTimeoutSeconds`),
      retentionSeconds: positiveInteger(q.retentionSeconds, `queues[${i}].retentionSeconds`),
    };
  });
  for (const role of QUEUE_ROLES) {
    const count = queues.filter((q) => q.role === role).length;
    if (count !== 1) throw new ContractError(`expected exactly one ${role} queue, found ${count}`);
  }
  for (const q of queues) {
    // The Rust SQS adapter finds a queue's dead-letter queue by this name, not through the contract.
    if (q.deadLetterQueue !== `${q.name}-dlq`) {
      throw new ContractError(`queue ${q.name}: dead-letter queue must be named ${q.name}-dlq (got ${q.deadLetterQueue})`);
    }
    // Workers give a message up after maxReceiveCount - 1 deliveries (IRIS_MAX_ATTEMPTS), so the
    // redrive policy must allow at least two receives.
    if (q.maxReceiveCount < 2) throw new ContractError(`queue ${q.name}: maxReceiveCount must be at least 2`);
  }
  // The services take one IRIS_QUEUE_PREFIX and name every queue <prefix><role>.
  queuePrefix(queues);
  const queueNames = new Set(queues.map((q) => q.name));

  const bucket = object(root.bucket, 'bucket');
  const notifications: NotificationContract[] = array(bucket.notifications, 'bucket.notifications').map((entry, i) => {
    const n = object(entry, `bucket.notifications[${i}]`);
    const queue = string(n.queue, `bucket.notifications[${i}].queue`);
    if (!queueNames.has(queue)) throw new ContractError(`bucket.notifications[${i}] targets unknown queue ${queue}`);
    const events = array(n.events, `bucket.notifications[${i}].events`).map((e, j) =>
      string(e, `bucket.notifications[${i}].events[${j}]`),
    );
    if (events.length === 0) throw new ContractError(`bucket.notifications[${i}].events is empty`);
    return {
      id: string(n.id, `bucket.notifications[${i}].id`),
      events,
      prefix: string(n.prefix, `bucket.notifications[${i}].prefix`, { allowEmpty: true }),
      suffix: string(n.suffix, `bucket.notifications[${i}].suffix`, { allowEmpty: true }),
      queue,
    };
  });

  const bus = object(root.eventBus, 'eventBus');
  const rules: EventRuleContract[] = array(bus.rules, 'eventBus.rules').map((entry, i) => {
    const r = object(entry, `eventBus.rules[${i}]`);
    const targetQueue = string(r.targetQueue, `eventBus.rules[${i}].targetQueue`);
    if (!queueNames.has(targetQueue)) throw new ContractError(`eventBus.rules[${i}] targets unknown queue ${targetQueue}`);
    return {
      name: string(r.name, `eventBus.rules[${i}].name`),
      eventPattern: object(r.eventPattern, `eventBus.rules[${i}].eventPattern`),
      targetQueue,
    };
  });

  return {
    formatVersion: 1,
    bucket: { name: string(bucket.name, 'bucket.name'), notifications },
    queues,
    jobsTable: table(root.jobsTable, 'jobsTable'),
    connectionsTable: table(root.connectionsTable, 'connectionsTable'),
    eventBus: {
      name: string(bus.name, 'eventBus.name'),
      source: string(bus.source, 'eventBus.source'),
      detailTypes: array(bus.detailTypes, 'eventBus.detailTypes').map((d, i) => string(d, `eventBus.detailTypes[${i}]`)),
      rules,
    },
  };
}

/** The `IRIS_QUEUE_PREFIX` that names every queue `<prefix><role>`; throws when there is none. */
export function queuePrefix(queues: readonly QueueContract[]): string {
  const prefixes = new Set(
    queues.map((q) => {
      if (!q.name.endsWith(q.role)) {
        throw new ContractError(`queue ${q.name} does not end with its role ${q.role}, so IRIS_QUEUE_PREFIX cannot name it`);
      }
      return q.name.slice(0, q.name.length - q.role.length);
    }),
  );
  if (prefixes.size !== 1) {
    throw new ContractError(`queues do not share one prefix (found ${[...prefixes].map((p) => JSON.stringify(p)).join(', ')})`);
  }
  return [...prefixes][0];
}

export function queueOf(contract: PipelineContract, role: QueueRole): QueueContract {
  const queue = contract.queues.find((q) => q.role === role);
  if (!queue) throw new ContractError(`no ${role} queue`);
  return queue;
}
