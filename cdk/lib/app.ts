import * as path from 'path';
import { App } from 'aws-cdk-lib';
import { loadContract } from './contract';
import { CpuArchitectureName, IrisStack } from './iris-stack';
import { CDK_DIR, CONTRACT_PATH } from './paths';

/**
 * Context keys the app reads (`npx cdk deploy -c key=value`), all optional:
 *  - bucketName: the data bucket's name (default: the contract's; must be globally unique on AWS);
 *  - notifyLambdaCodePath: the notify-routes Lambda's build output, a directory with `bootstrap`
 *    or a .zip (default: the placeholder that fails every invocation); scripts/build-websocket-lambda.sh
 *    builds it into ../target/lambda/iris-websocket-lambda;
 *  - notifyLambdaArchitecture: arm64 (default) or x86_64, as that build output;
 *  - tokenPublicKey: the Ed25519 public key that verifies WebSocket clients' tokens, as
 *    `iris token public-key` prints it (default: none, and every connection is refused);
 *  - fargateArchitecture: x86_64 (default) or arm64, for the ingest, mesh and notify images;
 *  - stackName: default IrisOculus.
 * No value is ever looked up in an AWS account: the app synthesises offline, without credentials.
 */
export const CONTEXT_KEYS = [
  'bucketName',
  'notifyLambdaCodePath',
  'notifyLambdaArchitecture',
  'tokenPublicKey',
  'fargateArchitecture',
  'stackName',
] as const;

function optionalString(app: App, key: string): string | undefined {
  const value: unknown = app.node.tryGetContext(key);
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new Error(`context ${key} must be a string`);
  return value;
}

function architecture(app: App, key: string): CpuArchitectureName | undefined {
  const value = optionalString(app, key);
  if (value === undefined || value === 'x86_64' || value === 'arm64') return value;
  throw new Error(`context ${key} must be x86_64 or arm64 (got ${value})`);
}

/** Adds the pipeline stack to `app` from its context and the committed contract. */
export function buildIrisApp(app: App, contractPath: string = CONTRACT_PATH): IrisStack {
  const codePath = optionalString(app, 'notifyLambdaCodePath');
  return new IrisStack(app, optionalString(app, 'stackName') ?? 'IrisOculus', {
    description: 'IRIS Oculus: CT scans to segmentations and meshes (S3, SQS, DynamoDB, EventBridge, ECS, API Gateway)',
    contract: loadContract(contractPath),
    bucketName: optionalString(app, 'bucketName'),
    // Relative paths are taken from cdk/, where `npx cdk` runs.
    notifyLambdaCodePath: codePath === undefined ? undefined : path.resolve(CDK_DIR, codePath),
    notifyLambdaArchitecture: architecture(app, 'notifyLambdaArchitecture'),
    tokenPublicKey: optionalString(app, 'tokenPublicKey'),
    fargateArchitecture: architecture(app, 'fargateArchitecture'),
  });
}
