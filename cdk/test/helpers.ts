// Shared by the tests: synthesising the app as `cdk synth` does (same feature flags, same
// context handling), and reading the template the way AWS would evaluate it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { buildIrisApp } from '../lib/app';
import { IrisStack } from '../lib/iris-stack';
import { CDK_DIR, CONTRACT_PATH } from '../lib/paths';

export type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface Synthesised {
  readonly stack: IrisStack;
  readonly template: Template;
  /** The raw CloudFormation template. */
  readonly json: Json;
  readonly assembly: ReturnType<App['synth']>;
  readonly outdir: string;
}

/** The feature flags of cdk.json, so tests synthesise what `cdk synth` does. */
function cdkJsonContext(): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(CDK_DIR, 'cdk.json'), 'utf8')).context;
}

const cache = new Map<string, Synthesised>();
const outdirs: string[] = [];
// Each synthesis stages the Docker contexts (a few MB); remove them when the test file is done.
process.on('exit', () => outdirs.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

/** Synthesises the app with extra context (e.g. `{ bucketName: 'x' }`), once per distinct context. */
export function synth(context: Record<string, unknown> = {}, contractPath: string = CONTRACT_PATH): Synthesised {
  const key = JSON.stringify([context, contractPath]);
  const cached = cache.get(key);
  if (cached) return cached;
  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-cdk-test-'));
  outdirs.push(outdir);
  const app = new App({ outdir, context: { ...cdkJsonContext(), ...context } });
  const stack = buildIrisApp(app, contractPath);
  const assembly = app.synth();
  const template = Template.fromStack(stack);
  const result = { stack, template, json: template.toJSON(), assembly, outdir };
  cache.set(key, result);
  return result;
}

export function readContractJson(): Json {
  return JSON.parse(fs.readFileSync(CONTRACT_PATH, 'utf8'));
}

export function resourcesOfType(json: Json, type: string): Array<[string, Json]> {
  return Object.entries(json.Resources as Record<string, Json>).filter(([, r]) => r.Type === type);
}

export function resource(json: Json, logicalId: string): Json {
  const found = json.Resources[logicalId];
  if (!found) throw new Error(`no resource ${logicalId}`);
  return found;
}

/** The logical id behind `{Ref: id}` or `{Fn::GetAtt: [id, attr]}`. */
export function referencedId(value: Json): string {
  if (value && typeof value === 'object') {
    if (typeof value.Ref === 'string') return value.Ref;
    if (Array.isArray(value['Fn::GetAtt'])) return value['Fn::GetAtt'][0];
  }
  throw new Error(`not a reference: ${JSON.stringify(value)}`);
}

// ---- Resolving intrinsic functions to the strings AWS would see, for IAM evaluation.

export const ACCOUNT = '111111111111';
export const REGION = 'us-east-1';

/** The ARN (or name) AWS would substitute for a reference, from the referenced resource's properties. */
export function resolve(json: Json, value: Json): string {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) throw new Error(`cannot resolve a list: ${JSON.stringify(value)}`);
  if (value.Ref !== undefined) {
    const pseudo: Record<string, string> = {
      'AWS::Partition': 'aws',
      'AWS::Region': REGION,
      'AWS::AccountId': ACCOUNT,
      'AWS::URLSuffix': 'amazonaws.com',
    };
    if (pseudo[value.Ref]) return pseudo[value.Ref];
    const r = json.Resources[value.Ref];
    if (!r) throw new Error(`Ref to unknown ${value.Ref}`);
    switch (r.Type) {
      case 'AWS::S3::Bucket':
        return r.Properties.BucketName;
      case 'AWS::ECS::Cluster':
        return value.Ref;
      case 'AWS::ApiGatewayV2::Api':
        return `api-${value.Ref}`;
      case 'AWS::SecretsManager::Secret':
        // Secrets Manager appends six random characters to the name.
        return `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${r.Properties.Name ?? value.Ref}-AbCdEf`;
      default:
        return `ref-${value.Ref}`;
    }
  }
  if (value['Fn::GetAtt'] !== undefined) {
    const [id, attribute] = value['Fn::GetAtt'];
    const r = json.Resources[id];
    if (!r) throw new Error(`GetAtt of unknown ${id}`);
    const p = r.Properties ?? {};
    const arn = (service: string, resourcePart: string, region = REGION, account = ACCOUNT) =>
      `arn:aws:${service}:${region}:${account}:${resourcePart}`;
    if (attribute === 'Arn') {
      switch (r.Type) {
        case 'AWS::SQS::Queue':
          return arn('sqs', p.QueueName);
        case 'AWS::S3::Bucket':
          return `arn:aws:s3:::${p.BucketName}`;
        case 'AWS::DynamoDB::Table':
          return arn('dynamodb', `table/${p.TableName}`);
        case 'AWS::Events::EventBus':
          return arn('events', `event-bus/${p.Name}`);
        case 'AWS::Events::Rule':
          return arn('events', `rule/${p.Name ?? id}`);
        case 'AWS::ECS::Cluster':
          return arn('ecs', `cluster/${id}`);
        case 'AWS::KMS::Key':
          return arn('kms', `key/${id}`);
        default:
          return `arn:unresolved:${id}`;
      }
    }
    if (attribute === 'QueueName' && r.Type === 'AWS::SQS::Queue') return p.QueueName;
    return `getatt-${id}-${attribute}`;
  }
  if (value['Fn::Join'] !== undefined) {
    const [separator, parts] = value['Fn::Join'];
    return (parts as Json[]).map((part) => resolve(json, part)).join(separator);
  }
  throw new Error(`cannot resolve ${JSON.stringify(value)}`);
}

// ---- IAM evaluation: is an action on a resource allowed by a role's identity policies?

export interface Statement {
  readonly Effect: 'Allow' | 'Deny';
  readonly Action: string | string[];
  readonly Resource: Json;
  readonly Condition?: Json;
  readonly Sid?: string;
}

function globToRegExp(pattern: string, flags = ''): RegExp {
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`, flags);
}

function list<T>(value: T | T[]): T[] {
  return Array.isArray(value) ? value : [value];
}

/**
 * Every identity-policy statement attached to the role `roleId` (inline and AWS::IAM::Policy).
 * Managed policies cannot be seen into: a role with any is refused, unless `ignoreManagedPolicies`
 * (for an answer about actions no managed policy of that role could grant, e.g. a Lambda's
 * AWSLambdaBasicExecutionRole, which allows CloudWatch Logs only).
 */
export function roleStatements(json: Json, roleId: string, options: { ignoreManagedPolicies?: boolean } = {}): Statement[] {
  const role = resource(json, roleId);
  if (role.Properties.ManagedPolicyArns?.length && !options.ignoreManagedPolicies) {
    throw new Error(`role ${roleId} has managed policies, which this evaluator cannot see into`);
  }
  const inline: Statement[] = (role.Properties.Policies ?? []).flatMap((p: Json) => p.PolicyDocument.Statement);
  const attached = resourcesOfType(json, 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties.Roles ?? []).some((r: Json) => r.Ref === roleId))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
  return [...inline, ...attached];
}

/**
 * Whether `statements` allow `action` on `resourceArn`. Conditions are ignored, which makes
 * "not allowed" answers conservative: a conditional Allow still counts as allowing.
 */
export function allows(json: Json, statements: Statement[], action: string, resourceArn: string): boolean {
  const matches = (s: Statement) =>
    list(s.Action).some((a) => globToRegExp(a, 'i').test(action)) &&
    list(s.Resource).some((r: Json) => globToRegExp(resolve(json, r)).test(resourceArn));
  const allowed = statements.some((s) => s.Effect === 'Allow' && matches(s));
  const denied = statements.some((s) => s.Effect === 'Deny' && matches(s));
  return allowed && !denied;
}

// ---- The services, by role.

export interface ServiceInfo {
  readonly serviceId: string;
  readonly taskDefinitionId: string;
  readonly taskRoleId: string;
  /** The role ECS itself uses for the task: image pulls, the log driver, the task's secrets. */
  readonly executionRoleId: string;
  readonly container: Json;
  readonly environment: Record<string, Json>;
  /** The container's ECS secrets: variable name → ValueFrom (a secret reference). */
  readonly secrets: Record<string, Json>;
}

/** The ECS services keyed by the stage they run (the awslogs stream prefix of their container). */
export function servicesByRole(json: Json): Record<string, ServiceInfo> {
  const result: Record<string, ServiceInfo> = {};
  for (const [serviceId, service] of resourcesOfType(json, 'AWS::ECS::Service')) {
    const taskDefinitionId = referencedId(service.Properties.TaskDefinition);
    const taskDefinition = resource(json, taskDefinitionId);
    const containers = taskDefinition.Properties.ContainerDefinitions;
    if (containers.length !== 1) throw new Error(`${taskDefinitionId} has ${containers.length} containers`);
    const container = containers[0];
    const role = container.LogConfiguration.Options['awslogs-stream-prefix'];
    const environment = Object.fromEntries((container.Environment as Json[]).map((e) => [e.Name, e.Value]));
    const secrets = Object.fromEntries(((container.Secrets ?? []) as Json[]).map((e) => [e.Name, e.ValueFrom]));
    result[role] = {
      serviceId,
      taskDefinitionId,
      taskRoleId: referencedId(taskDefinition.Properties.TaskRoleArn),
      executionRoleId: referencedId(taskDefinition.Properties.ExecutionRoleArn),
      container,
      environment,
      secrets,
    };
  }
  return result;
}

/** The SQS queue resources keyed by queue name. */
export function queuesByName(json: Json): Record<string, { id: string; properties: Json }> {
  return Object.fromEntries(
    resourcesOfType(json, 'AWS::SQS::Queue').map(([id, q]) => [q.Properties.QueueName, { id, properties: q.Properties }]),
  );
}
