// The compute side: ECS services, their images, environment, scaling and permissions; the
// WebSocket API and its Lambda; outputs; and the context overrides.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { loadContract, queueOf, QUEUE_ROLES, QueueRole } from '../lib/contract';
import { dockerIgnorePatterns } from '../lib/docker-context';
import { GPU_INSTANCE_TYPES, SEGMENT_CAPACITY_WEIGHTS } from '../lib/iris-stack';
import { CDK_DIR, PLACEHOLDER_LAMBDA_DIR, REPO_ROOT } from '../lib/paths';
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
  synth,
  Synthesised,
} from './helpers';

const contract = loadContract();
const { json, assembly, stack } = synth();
const services = servicesByRole(json);
const queues = queuesByName(json);

const sqsArn = (name: string) => `arn:aws:sqs:${REGION}:${ACCOUNT}:${name}`;
const objectArn = (key: string) => `arn:aws:s3:::${contract.bucket.name}/${key}`;
const tableArn = (name: string) => `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${name}`;
const busArn = (name: string) => `arn:aws:events:${REGION}:${ACCOUNT}:event-bus/${name}`;

describe('services', () => {
  test('one ECS service per stage', () => {
    assert.deepStrictEqual(Object.keys(services).sort(), [...QUEUE_ROLES].sort());
  });

  for (const role of ['ingest', 'mesh', 'notify'] as const) {
    test(`${role} runs on Fargate, outbound only`, () => {
      const service = resource(json, services[role].serviceId).Properties;
      assert.equal(service.LaunchType, 'FARGATE');
      const network = service.NetworkConfiguration.AwsvpcConfiguration;
      // Only notify has a public address: the WebSocket Management API is public only (network.test.ts).
      assert.equal(network.AssignPublicIp, role === 'notify' ? 'ENABLED' : 'DISABLED');
      for (const group of network.SecurityGroups) {
        const sg = resource(json, referencedId(group)).Properties;
        assert.equal(sg.SecurityGroupIngress, undefined, 'no inbound rule');
      }
      const taskDefinition = resource(json, services[role].taskDefinitionId).Properties;
      assert.deepStrictEqual(taskDefinition.RequiresCompatibilities, ['FARGATE']);
    });
  }

  test('segment runs on GPU instances: one GPU, EC2, bridge network', () => {
    const { container, taskDefinitionId, serviceId } = services.segment;
    const taskDefinition = resource(json, taskDefinitionId).Properties;
    assert.deepStrictEqual(taskDefinition.RequiresCompatibilities, ['EC2']);
    assert.equal(taskDefinition.NetworkMode, 'bridge');
    assert.deepStrictEqual(container.ResourceRequirements, [{ Type: 'GPU', Value: '1' }]);
    const service = resource(json, serviceId);
    assert.equal(service.Properties.LaunchType, undefined, 'placed by capacity providers');
    // Created only once the capacity providers are associated with the cluster.
    const [[associationId]] = resourcesOfType(json, 'AWS::ECS::ClusterCapacityProviderAssociations');
    assert.ok(service.DependsOn.includes(associationId));
  });

  test('segment capacity: g4dn/g5 spot first, on-demand as the fallback share', () => {
    const strategy: Json[] = resource(json, services.segment.serviceId).Properties.CapacityProviderStrategy;
    const groupOf = (provider: Json) =>
      resource(json, referencedId(resource(json, referencedId(provider)).Properties.AutoScalingGroupProvider.AutoScalingGroupArn)).Properties;
    const byKind = Object.fromEntries(
      strategy.map((s) => [groupOf(s.CapacityProvider).MixedInstancesPolicy.InstancesDistribution.OnDemandPercentageAboveBaseCapacity === 0 ? 'spot' : 'onDemand', s]),
    );
    assert.equal(byKind.spot.Weight, SEGMENT_CAPACITY_WEIGHTS.spot);
    assert.equal(byKind.onDemand.Weight, SEGMENT_CAPACITY_WEIGHTS.onDemand);
    assert.ok(SEGMENT_CAPACITY_WEIGHTS.spot > SEGMENT_CAPACITY_WEIGHTS.onDemand && SEGMENT_CAPACITY_WEIGHTS.onDemand > 0);
    const spot = groupOf(byKind.spot.CapacityProvider);
    const onDemand = groupOf(byKind.onDemand.CapacityProvider);
    assert.equal(spot.MixedInstancesPolicy.InstancesDistribution.OnDemandBaseCapacity, 0);
    assert.equal(spot.MixedInstancesPolicy.InstancesDistribution.SpotAllocationStrategy, 'price-capacity-optimized');
    assert.equal(onDemand.MixedInstancesPolicy.InstancesDistribution.OnDemandPercentageAboveBaseCapacity, 100);
    for (const group of [spot, onDemand]) {
      assert.equal(group.MinSize, '0', 'no GPU instance runs while the queue is empty');
      assert.deepStrictEqual(
        group.MixedInstancesPolicy.LaunchTemplate.Overrides.map((o: Json) => o.InstanceType),
        [...GPU_INSTANCE_TYPES],
      );
    }
    for (const [, provider] of resourcesOfType(json, 'AWS::ECS::CapacityProvider')) {
      assert.equal(provider.Properties.AutoScalingGroupProvider.ManagedScaling.Status, 'ENABLED');
      assert.equal(provider.Properties.AutoScalingGroupProvider.ManagedTerminationProtection, 'ENABLED');
    }
  });

  test('GPU instances boot the ECS-optimized GPU AMI from its SSM parameter (no lookup); spot ones drain on interruption', () => {
    const parameters = Object.values(json.Parameters as Record<string, Json>).filter(
      (p) => p.Default === '/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id',
    );
    assert.equal(parameters.length, 1);
    assert.equal(parameters[0].Type, 'AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>');
    const templates = resourcesOfType(json, 'AWS::EC2::LaunchTemplate');
    assert.equal(templates.length, 2);
    for (const [, t] of templates) {
      const data = t.Properties.LaunchTemplateData;
      assert.ok(data.ImageId.Ref && json.Parameters[data.ImageId.Ref] === parameters[0]);
      assert.deepStrictEqual(data.MetadataOptions, { HttpPutResponseHopLimit: 1, HttpTokens: 'required' });
    }
    const userData = (groupKind: number) => {
      const [[, group]] = resourcesOfType(json, 'AWS::AutoScaling::AutoScalingGroup').filter(
        ([, g]) => g.Properties.MixedInstancesPolicy.InstancesDistribution.OnDemandPercentageAboveBaseCapacity === groupKind,
      );
      const template = resource(json, referencedId(group.Properties.MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification.LaunchTemplateId));
      return JSON.stringify(template.Properties.LaunchTemplateData.UserData);
    };
    assert.match(userData(0), /ECS_ENABLE_SPOT_INSTANCE_DRAINING=true/);
    assert.doesNotMatch(userData(100), /SPOT/);
  });

  test('each container gets exactly the IRIS_* variables the Rust config reads, values from the contract', () => {
    // Every IRIS_* name the one configuration struct reads (shared/core/src/config.rs).
    const configSource = fs.readFileSync(path.join(REPO_ROOT, 'shared', 'core', 'src', 'config.rs'), 'utf8');
    const readByRust = new Set(configSource.match(/"IRIS_[A-Z_]+"/g)!.map((n) => n.slice(1, -1)));
    // Read by the notify service itself (not config.rs): where it posts to WebSocket connections.
    const readByNotify = new Set(['IRIS_WS_CALLBACK_URL']);
    for (const role of QUEUE_ROLES) {
      const env = services[role].environment;
      const q = queueOf(contract, role);
      for (const name of Object.keys(env).filter((n) => n.startsWith('IRIS_'))) {
        assert.ok(readByRust.has(name) || (role === 'notify' && readByNotify.has(name)), `${role}: ${name} is not read by config.rs`);
      }
      assert.deepStrictEqual(
        {
          IRIS_BACKEND: env.IRIS_BACKEND,
          IRIS_BUCKET: env.IRIS_BUCKET,
          IRIS_JOBS_TABLE: env.IRIS_JOBS_TABLE,
          IRIS_CONNECTIONS_TABLE: env.IRIS_CONNECTIONS_TABLE,
          IRIS_EVENT_BUS: env.IRIS_EVENT_BUS,
          IRIS_LOG_FORMAT: env.IRIS_LOG_FORMAT,
        },
        {
          IRIS_BACKEND: 'aws',
          IRIS_BUCKET: contract.bucket.name,
          IRIS_JOBS_TABLE: contract.jobsTable.name,
          IRIS_CONNECTIONS_TABLE: contract.connectionsTable.name,
          IRIS_EVENT_BUS: contract.eventBus.name,
          IRIS_LOG_FORMAT: 'json',
        },
        role,
      );
      // The service finds its queue as <prefix><role>, and <that>-dlq.
      assert.equal(`${env.IRIS_QUEUE_PREFIX}${role}`, q.name);
      // The workers give up one receive before SQS's redrive would (bootstrap.rs).
      assert.equal(Number(env.IRIS_MAX_ATTEMPTS) + 1, queues[q.name].properties.RedrivePolicy.maxReceiveCount);
      // Same visibility timeout as the queue; heartbeats every third of it keep a message hidden.
      assert.equal(Number(env.IRIS_VISIBILITY_TIMEOUT_SECS), queues[q.name].properties.VisibilityTimeout);
    }
    // The notify consumer posts to connections through the WebSocket stage's management endpoint.
    const apiId = resourcesOfType(json, 'AWS::ApiGatewayV2::Api')[0][0];
    assert.equal(resolve(json, services.notify.environment.IRIS_WS_CALLBACK_URL), `https://api-${apiId}.execute-api.${REGION}.amazonaws.com/live`);
    for (const role of ['ingest', 'segment', 'mesh']) assert.equal(services[role].environment.IRIS_WS_CALLBACK_URL, undefined);
  });

  test('containers are health-checked by the image\'s script and get two minutes to finish on SIGTERM', () => {
    for (const role of QUEUE_ROLES) {
      const { container } = services[role];
      assert.deepStrictEqual(container.HealthCheck.Command, ['CMD', '/usr/local/bin/iris-healthcheck']);
      assert.equal(container.StopTimeout, 120);
    }
    const dockerfile = fs.readFileSync(path.join(REPO_ROOT, 'docker', 'service.Dockerfile'), 'utf8');
    assert.match(dockerfile, /COPY --chmod=0755 docker\/healthcheck.sh \/usr\/local\/bin\/iris-healthcheck/);
  });
});

describe('scaling from zero on queue backlog', () => {
  const targets = resourcesOfType(json, 'AWS::ApplicationAutoScaling::ScalableTarget');
  const policies = resourcesOfType(json, 'AWS::ApplicationAutoScaling::ScalingPolicy');
  const alarms = resourcesOfType(json, 'AWS::CloudWatch::Alarm');
  const queueOfMetric = (metric: Json) => resolve(json, metric.Dimensions[0].Value);

  test('every scalable target has min capacity 0', () => {
    assert.equal(targets.length, 4);
    for (const [id, t] of targets) assert.equal(t.Properties.MinCapacity, 0, id);
  });

  for (const role of QUEUE_ROLES) {
    test(`${role}: scale out while messages wait, to zero only when nothing is visible or in flight`, () => {
      const queueName = queueOf(contract, role).name;
      const [[targetId, target]] = targets.filter(([, t]) => JSON.stringify(t.Properties.ResourceId).includes(services[role].serviceId));
      assert.equal(target.Properties.ScalableDimension, 'ecs:service:DesiredCount');
      assert.ok(target.Properties.MaxCapacity >= 1);
      const own = policies.filter(([, p]) => p.Properties.ScalingTargetId.Ref === targetId);
      assert.equal(own.length, 2);
      const alarmOf = (policyId: string) => {
        const found = alarms.filter(([, a]) => a.Properties.AlarmActions.some((x: Json) => x.Ref === policyId));
        assert.equal(found.length, 1);
        return found[0][1].Properties;
      };

      const [[outId, out]] = own.filter(([, p]) => p.Properties.StepScalingPolicyConfiguration.AdjustmentType === 'ChangeInCapacity');
      assert.ok(out.Properties.StepScalingPolicyConfiguration.StepAdjustments.every((s: Json) => s.ScalingAdjustment > 0));
      const outAlarm = alarmOf(outId);
      assert.equal(outAlarm.MetricName, 'ApproximateNumberOfMessagesVisible');
      assert.equal(queueOfMetric(outAlarm), queueName);
      assert.equal(outAlarm.ComparisonOperator, 'GreaterThanOrEqualToThreshold');
      assert.equal(outAlarm.Threshold, 1);

      const [[inId, scaleIn]] = own.filter(([, p]) => p.Properties.StepScalingPolicyConfiguration.AdjustmentType === 'ExactCapacity');
      assert.deepStrictEqual(scaleIn.Properties.StepScalingPolicyConfiguration.StepAdjustments, [{ MetricIntervalUpperBound: 0, ScalingAdjustment: 0 }]);
      const inAlarm = alarmOf(inId);
      assert.equal(inAlarm.ComparisonOperator, 'LessThanOrEqualToThreshold');
      assert.equal(inAlarm.Threshold, 0);
      assert.ok(inAlarm.EvaluationPeriods >= 3, 'idle for several minutes first');
      const metrics: Json[] = inAlarm.Metrics;
      const expression = metrics.find((m) => m.Expression);
      const inputs = metrics.filter((m) => m.MetricStat);
      assert.deepStrictEqual(
        inputs.map((m) => m.MetricStat.Metric.MetricName).sort(),
        ['ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesVisible'],
      );
      assert.ok(inputs.every((m) => queueOfMetric(m.MetricStat.Metric) === queueName));
      assert.deepStrictEqual(expression.Expression.split(/\s*\+\s*/).sort(), inputs.map((m) => m.Id).sort());
    });
  }
});

describe('least privilege', () => {
  const statementsOf = (role: QueueRole) => roleStatements(json, services[role].taskRoleId);
  const can = (role: QueueRole, action: string, arn: string) => allows(json, statementsOf(role), action, arn);
  const readers: Record<string, QueueRole[]> = { 'uploads/': ['ingest'], 'jobs/': ['segment', 'mesh'], 'models/': ['segment'] };
  const writers: Record<string, QueueRole[]> = { 'uploads/': [], 'jobs/': ['ingest', 'segment', 'mesh'], 'models/': [] };

  for (const [prefix, roles] of Object.entries(readers)) {
    test(`only ${roles.join(' and ')} can read ${prefix}*`, () => {
      for (const role of QUEUE_ROLES) assert.equal(can(role, 's3:GetObject', objectArn(`${prefix}a/b.nii.gz`)), roles.includes(role), role);
    });
  }
  for (const [prefix, roles] of Object.entries(writers)) {
    test(`only ${roles.length ? roles.join(', ') : 'no service'} can write ${prefix}*`, () => {
      for (const role of QUEUE_ROLES) assert.equal(can(role, 's3:PutObject', objectArn(`${prefix}a/b.nii.gz`)), roles.includes(role), role);
    });
  }

  test('no service can delete objects, change the bucket or read outside the pipeline prefixes', () => {
    for (const role of QUEUE_ROLES) {
      for (const action of ['s3:DeleteObject', 's3:PutBucketPolicy', 's3:PutBucketNotification', 's3:PutLifecycleConfiguration']) {
        assert.equal(can(role, action, objectArn('jobs/x')) || can(role, action, `arn:aws:s3:::${contract.bucket.name}`), false, `${role} ${action}`);
      }
      assert.equal(can(role, 's3:GetObject', objectArn('other/secret')), false, role);
    }
  });

  test('each service consumes only its own queue and sends only to its own dead-letter queue', () => {
    for (const role of QUEUE_ROLES) {
      for (const other of contract.queues) {
        const own = other.role === role;
        for (const action of ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility']) {
          assert.equal(can(role, action, sqsArn(other.name)), own, `${role} ${action} ${other.name}`);
          assert.equal(can(role, action, sqsArn(other.deadLetterQueue)), false, `${role} ${action} ${other.deadLetterQueue}`);
        }
        assert.equal(can(role, 'sqs:SendMessage', sqsArn(other.deadLetterQueue)), own, `${role} send ${other.deadLetterQueue}`);
        assert.equal(can(role, 'sqs:SendMessage', sqsArn(other.name)), false, `${role} send ${other.name}`);
        for (const action of ['sqs:PurgeQueue', 'sqs:DeleteQueue', 'sqs:SetQueueAttributes']) {
          assert.equal(can(role, action, sqsArn(other.name)), false, `${role} ${action}`);
        }
      }
    }
    // The ingest role in particular cannot touch the mesh queue's messages.
    assert.equal(can('ingest', 'sqs:ReceiveMessage', sqsArn(queueOf(contract, 'mesh').name)), false);
  });

  test('job table: ingest creates records, every stage reads and advances them, nobody deletes or scans', () => {
    const jobs = tableArn(contract.jobsTable.name);
    const expect: Record<QueueRole, string[]> = {
      ingest: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
      segment: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
      mesh: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
      notify: ['dynamodb:GetItem', 'dynamodb:Query'],
    };
    const all = ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:Query', 'dynamodb:DeleteItem', 'dynamodb:Scan', 'dynamodb:DeleteTable'];
    for (const role of QUEUE_ROLES) {
      for (const action of all) assert.equal(can(role, action, jobs), expect[role].includes(action), `${role} ${action}`);
    }
    // `list` queries the user index.
    assert.ok(can('notify', 'dynamodb:Query', `${jobs}/index/userId-createdAt`));
  });

  test('only notify touches the connection table, and only it posts to WebSocket connections', () => {
    const connections = tableArn(contract.connectionsTable.name);
    const api = resourcesOfType(json, 'AWS::ApiGatewayV2::Api')[0][0];
    const connection = `arn:aws:execute-api:${REGION}:${ACCOUNT}:api-${api}/live/POST/@connections/abc=`;
    for (const role of QUEUE_ROLES) {
      assert.equal(can(role, 'dynamodb:PutItem', connections), role === 'notify', role);
      assert.equal(can(role, 'dynamodb:Query', `${connections}/index/jobId-index`), role === 'notify', role);
      assert.equal(can(role, 'execute-api:ManageConnections', connection), role === 'notify', role);
    }
  });

  test('the stages publish events on the pipeline bus only; notify publishes none', () => {
    for (const role of QUEUE_ROLES) {
      assert.equal(can(role, 'events:PutEvents', busArn(contract.eventBus.name)), role !== 'notify', role);
      assert.equal(can(role, 'events:PutEvents', busArn('default')), false, role);
    }
  });

  test('no task role statement has a wildcard action or resource', () => {
    for (const role of QUEUE_ROLES) {
      for (const s of statementsOf(role)) {
        const actions = Array.isArray(s.Action) ? s.Action : [s.Action];
        const resources = (Array.isArray(s.Resource) ? s.Resource : [s.Resource]).map((r: Json) => resolve(json, r));
        assert.ok(!actions.some((a) => a.includes('*')), `${role}: ${actions}`);
        assert.ok(!resources.includes('*'), `${role}: ${s.Sid} on *`);
      }
    }
  });

  test('the evaluator is not vacuous: it sees an allowed action and a denied one', () => {
    assert.ok(can('ingest', 's3:GetObject', objectArn('uploads/u/scan.nii.gz')));
    assert.ok(!can('ingest', 's3:GetObject', objectArn('uploadsX/u/scan.nii.gz')));
  });
});

/** The staged directory of a Lambda's code asset (its S3 key is the asset's hash). */
function stagedCode(synthesised: Pick<Synthesised, 'json' | 'assembly' | 'stack'>, functionId: string): string {
  const key: string = resolve(synthesised.json, resource(synthesised.json, functionId).Properties.Code.S3Key);
  const manifest = JSON.parse(fs.readFileSync(path.join(synthesised.assembly.directory, `${synthesised.stack.artifactId}.assets.json`), 'utf8'));
  const asset = manifest.files[key.replace(/\.zip$/, '')];
  assert.ok(asset, `no file asset for ${key}`);
  return path.join(synthesised.assembly.directory, asset.source.path);
}

describe('WebSocket API', () => {
  const [[apiId, api]] = resourcesOfType(json, 'AWS::ApiGatewayV2::Api');
  const lambdaId = (() => {
    const functions = resourcesOfType(json, 'AWS::Lambda::Function').filter(([, f]) => f.Properties.Runtime === 'provided.al2023');
    assert.equal(functions.length, 1);
    return functions[0][0];
  })();

  test('routes on $request.body.action to the notify-routes Lambda', () => {
    assert.equal(api.Properties.ProtocolType, 'WEBSOCKET');
    assert.equal(api.Properties.RouteSelectionExpression, '$request.body.action');
    const routes = resourcesOfType(json, 'AWS::ApiGatewayV2::Route').map(([, r]) => r.Properties);
    assert.deepStrictEqual(routes.map((r) => r.RouteKey).sort(), ['$connect', '$default', '$disconnect', 'list', 'subscribe', 'unsubscribe']);
    for (const route of routes) {
      assert.equal(referencedId(route.ApiId), apiId);
      const integrationId = (route.Target['Fn::Join'][1] as Json[]).map((p) => (typeof p === 'string' ? null : p.Ref)).find(Boolean);
      const integration = resource(json, integrationId).Properties;
      assert.match(JSON.stringify(integration.IntegrationUri), new RegExp(lambdaId));
    }
  });

  test('the Lambda: provided.al2023, arm64 by default, the placeholder code unless notifyLambdaCodePath is given', () => {
    const fn = resource(json, lambdaId).Properties;
    assert.deepStrictEqual(fn.Architectures, ['arm64']);
    assert.equal(fn.Handler, 'bootstrap');
    const staged = stagedCode({ json, assembly, stack }, lambdaId);
    assert.equal(fs.readFileSync(path.join(staged, 'bootstrap'), 'utf8'), fs.readFileSync(path.join(PLACEHOLDER_LAMBDA_DIR, 'bootstrap'), 'utf8'));
    const warnings = stack.node.metadata.filter((m) => m.type === 'aws:cdk:warning').map((m) => String(m.data));
    assert.ok(
      warnings.some((w) => /placeholder/.test(w) && /scripts\/build-websocket-lambda\.sh/.test(w) && /-c notifyLambdaCodePath=\.\.\/target\/lambda\/iris-websocket-lambda\b/.test(w)),
      'synth warns that the Lambda is a placeholder, and says how to build and deploy the real one',
    );
  });

  test('the placeholder fails every invocation, loudly', () => {
    const bootstrap = path.join(PLACEHOLDER_LAMBDA_DIR, 'bootstrap');
    assert.ok(fs.statSync(bootstrap).mode & 0o111, 'bootstrap is executable');
    const run = spawnSync(bootstrap, [], { encoding: 'utf8' });
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, /not built yet/);
    assert.match(run.stderr, /scripts\/build-websocket-lambda\.sh/);
  });

  test('notifyLambdaCodePath and notifyLambdaArchitecture select the real Lambda', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-notify-lambda-'));
    fs.writeFileSync(path.join(dir, 'bootstrap'), '#!/bin/sh\necho real\n', { mode: 0o755 });
    const other = synth({ notifyLambdaCodePath: dir, notifyLambdaArchitecture: 'x86_64' });
    const [[id, fn]] = resourcesOfType(other.json, 'AWS::Lambda::Function').filter(([, f]) => f.Properties.Runtime === 'provided.al2023');
    assert.deepStrictEqual(fn.Properties.Architectures, ['x86_64']);
    const staged = stagedCode(other, id);
    assert.equal(fs.readFileSync(path.join(staged, 'bootstrap'), 'utf8'), '#!/bin/sh\necho real\n');
    assert.ok(!other.stack.node.metadata.some((m) => m.type === 'aws:cdk:warning' && /placeholder/.test(String(m.data))));
  });

  test('$connect is authorised by the routes Lambda: a REQUEST authorizer on the query string token; no other route has one', () => {
    const authorizers = resourcesOfType(json, 'AWS::ApiGatewayV2::Authorizer');
    assert.equal(authorizers.length, 1);
    const [[authorizerId, authorizer]] = authorizers;
    assert.equal(referencedId(authorizer.Properties.ApiId), apiId);
    assert.equal(authorizer.Properties.AuthorizerType, 'REQUEST');
    assert.deepStrictEqual(authorizer.Properties.IdentitySource, ['route.request.querystring.token']);
    // arn:…:apigateway:<region>:lambda:path/2015-03-31/functions/<the routes Lambda's ARN>/invocations
    const uri: Json[] = authorizer.Properties.AuthorizerUri['Fn::Join'][1];
    assert.ok(uri.some((p) => p['Fn::GetAtt']?.[0] === lambdaId && p['Fn::GetAtt'][1] === 'Arn'), JSON.stringify(uri));
    assert.match(resolve(json, authorizer.Properties.AuthorizerUri), /^arn:aws:apigateway:us-east-1:lambda:path\/2015-03-31\/functions\/.+\/invocations$/);
    for (const [, route] of resourcesOfType(json, 'AWS::ApiGatewayV2::Route')) {
      const { RouteKey, AuthorizationType, AuthorizerId } = route.Properties;
      if (RouteKey === '$connect') {
        assert.equal(AuthorizationType, 'CUSTOM');
        assert.equal(referencedId(AuthorizerId), authorizerId);
      } else {
        // API Gateway authorises a WebSocket connection once, at $connect.
        assert.ok(AuthorizationType === undefined || AuthorizationType === 'NONE', `${RouteKey}: ${AuthorizationType}`);
        assert.equal(AuthorizerId, undefined, RouteKey);
      }
    }
    // API Gateway may invoke the Lambda as this authorizer.
    const permissions = resourcesOfType(json, 'AWS::Lambda::Permission').filter(
      ([, p]) => referencedId(p.Properties.FunctionName) === lambdaId && JSON.stringify(p.Properties.SourceArn).includes(`"${authorizerId}"`),
    );
    assert.equal(permissions.length, 1);
    const [[, permission]] = permissions;
    assert.equal(permission.Properties.Principal, 'apigateway.amazonaws.com');
    assert.equal(permission.Properties.Action, 'lambda:InvokeFunction');
    assert.equal(resolve(json, permission.Properties.SourceArn), `arn:aws:execute-api:${REGION}:${ACCOUNT}:api-${apiId}/authorizers/ref-${authorizerId}`);
  });

  test("the Lambda and the notify service post to the stage's Management API endpoint (IRIS_WS_CALLBACK_URL)", () => {
    const expected = `https://api-${apiId}.execute-api.${REGION}.amazonaws.com/live`;
    const lambdaEnv = resource(json, lambdaId).Properties.Environment.Variables;
    assert.equal(resolve(json, lambdaEnv.IRIS_WS_CALLBACK_URL), expected);
    assert.equal(resolve(json, services.notify.environment.IRIS_WS_CALLBACK_URL), expected);
    // The same as the stage's own callback URL (the output).
    assert.equal(resolve(json, json.Outputs.WebSocketCallbackUrl.Value), expected);
    const [[stageId, stage]] = resourcesOfType(json, 'AWS::ApiGatewayV2::Stage');
    assert.equal(stage.Properties.StageName, 'live');
    assert.equal(referencedId(stage.Properties.ApiId), apiId);
    // The Lambda must not depend on the stage (which would be circular once the stage depends on
    // the routes); it depends on the API only.
    assert.ok(!JSON.stringify(resource(json, lambdaId)).includes(`"${stageId}"`));
  });

  test('the Lambda and the notify task role may ManageConnections on that stage, nowhere else', () => {
    const lambdaRoleId = referencedId(resource(json, lambdaId).Properties.Role);
    // The Lambda's one managed policy is AWSLambdaBasicExecutionRole (CloudWatch Logs only).
    assert.deepStrictEqual(
      resource(json, lambdaRoleId).Properties.ManagedPolicyArns.map((arn: Json) => resolve(json, arn)),
      ['arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole'],
    );
    const roles = {
      lambda: roleStatements(json, lambdaRoleId, { ignoreManagedPolicies: true }),
      notify: roleStatements(json, services.notify.taskRoleId),
    };
    for (const [name, statements] of Object.entries(roles)) {
      for (const method of ['POST', 'GET', 'DELETE']) {
        const arn = `arn:aws:execute-api:${REGION}:${ACCOUNT}:api-${apiId}/live/${method}/@connections/Abc123=`;
        assert.ok(allows(json, statements, 'execute-api:ManageConnections', arn), `${name} ${method}`);
      }
      assert.ok(!allows(json, statements, 'execute-api:ManageConnections', `arn:aws:execute-api:${REGION}:${ACCOUNT}:api-other/live/POST/@connections/x`), name);
      assert.ok(!allows(json, statements, 'execute-api:ManageConnections', `arn:aws:execute-api:${REGION}:${ACCOUNT}:api-${apiId}/dev/POST/@connections/x`), name);
    }
  });

  test('without tokenPublicKey: IRIS_TOKEN_PUBLIC_KEY is unset and synth warns that every connection is refused', () => {
    assert.equal(resource(json, lambdaId).Properties.Environment.Variables.IRIS_TOKEN_PUBLIC_KEY, undefined);
    const warnings = stack.node.metadata.filter((m) => m.type === 'aws:cdk:warning').map((m) => String(m.data));
    assert.ok(
      warnings.some((w) => /tokenPublicKey/.test(w) && /refuses every WebSocket connection/.test(w) && /iris token public-key/.test(w)),
      `warnings: ${warnings.join(' | ')}`,
    );
  });

  test('tokenPublicKey reaches the Lambda as IRIS_TOKEN_PUBLIC_KEY (and only the Lambda); no warning then', () => {
    // A real Ed25519 public key, encoded as `iris token public-key` prints it (JWK x: base64url, no padding).
    const key = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x!;
    assert.equal(key.length, 43);
    const other = synth({ tokenPublicKey: key });
    const [[, fn]] = resourcesOfType(other.json, 'AWS::Lambda::Function').filter(([, f]) => f.Properties.Runtime === 'provided.al2023');
    assert.equal(fn.Properties.Environment.Variables.IRIS_TOKEN_PUBLIC_KEY, key);
    assert.ok(resolve(other.json, fn.Properties.Environment.Variables.IRIS_WS_CALLBACK_URL).endsWith('/live'));
    for (const [role, info] of Object.entries(servicesByRole(other.json))) {
      assert.equal(info.environment.IRIS_TOKEN_PUBLIC_KEY, undefined, role);
    }
    assert.ok(!other.stack.node.metadata.some((m) => m.type === 'aws:cdk:warning' && /tokenPublicKey/.test(String(m.data))));
  });

  test('an invalid tokenPublicKey fails the synth with a clear error', () => {
    const valid = generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x!;
    const invalid = [
      'abc', // too short
      `${valid}=`, // padded
      `${valid}A`, // 44 characters
      `${valid.slice(0, 42)}+`, // base64, not base64url
      `${valid.slice(0, 42)}/`,
      `${valid.slice(0, 20)} ${valid.slice(21)}`, // a space
    ];
    for (const value of invalid) {
      assert.throws(() => synth({ tokenPublicKey: value }), /tokenPublicKey must be the Ed25519 public key as printed by `iris token public-key`/, value);
    }
    // 43 characters whose last one carries bits beyond the 32 bytes: no strict decoder accepts it.
    const lastIndex = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const canonicalLast = valid[42];
    const nonCanonical = `${valid.slice(0, 42)}${lastIndex[lastIndex.indexOf(canonicalLast) + 1]}`;
    assert.throws(() => synth({ tokenPublicKey: nonCanonical }), /not the canonical encoding of 32 bytes/);
    assert.throws(() => synth({ tokenPublicKey: 42 }), /context tokenPublicKey must be a string/);
  });

  test('a notifyLambdaCodePath without bootstrap is refused', () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'iris-notify-empty-'));
    assert.throws(() => synth({ notifyLambdaCodePath: empty }), /must be a \.zip or a directory containing the Lambda's bootstrap/);
  });
});

/** The workspace members the root Cargo.toml lists (folders relative to the repository root). */
function workspaceMembers(): string[] {
  const manifest = fs.readFileSync(path.join(REPO_ROOT, 'Cargo.toml'), 'utf8');
  const list = manifest.match(/^members\s*=\s*\[([^\]]*)\]/m);
  assert.ok(list, 'the root Cargo.toml lists its members');
  return [...list[1].matchAll(/"([^"]+)"/g)].map((m) => m[1]);
}

describe('container images', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(assembly.directory, `${stack.artifactId}.assets.json`), 'utf8'));
  const images: Json[] = Object.values(manifest.dockerImages).map((i: Json) => i.source);

  test('built from the repository root with the docker/ Dockerfiles: three CPU services and the GPU segment image', () => {
    const described = images.map((s) => `${s.dockerFile} ${s.dockerBuildArgs?.SERVICE ?? '-'} ${s.platform}`).sort();
    assert.deepStrictEqual(described, [
      'docker/segment-gpu.Dockerfile - linux/amd64',
      'docker/service.Dockerfile ingest linux/amd64',
      'docker/service.Dockerfile mesh linux/amd64',
      'docker/service.Dockerfile notify linux/amd64',
    ]);
  });

  test('each staged context holds what its Dockerfile copies, and nothing of cdk/, target/ or .git', () => {
    for (const source of images) {
      const context = path.join(assembly.directory, source.directory);
      const dockerfile = fs.readFileSync(path.join(context, source.dockerFile), 'utf8');
      // Sources of COPY lines that read the build context (not --from another stage).
      const copied = [...dockerfile.matchAll(/^COPY\s+(?!.*--from=)(?:--\S+\s+)*(.+)$/gm)].flatMap((m) => m[1].trim().split(/\s+/).slice(0, -1));
      assert.ok(copied.includes('Cargo.lock') && copied.includes('docker/healthcheck.sh'), `${source.dockerFile}: parsed ${copied}`);
      for (const entry of copied) assert.ok(fs.existsSync(path.join(context, entry)), `${source.dockerFile}: ${entry} missing from the staged context`);
      for (const absent of ['cdk', 'target', '.git', 'iris-out', '.iris', 'README.md', 'docker/README.md']) {
        assert.ok(!fs.existsSync(path.join(context, absent)), `${absent} must not be in the build context`);
      }
      assert.ok(fs.existsSync(path.join(context, 'services', 'ingest', 'Cargo.toml')));
      // cargo loads the whole workspace: every member's folder must be in the context.
      for (const member of workspaceMembers()) {
        assert.ok(fs.existsSync(path.join(context, member, 'Cargo.toml')), `${source.dockerFile}: workspace member ${member} missing`);
      }
    }
  });

  test('both Dockerfiles use the same context allowlist', () => {
    const read = (f: string) => fs.readFileSync(path.join(REPO_ROOT, 'docker', f), 'utf8');
    assert.equal(read('service.Dockerfile.dockerignore'), read('segment-gpu.Dockerfile.dockerignore'));
  });

  test('the WebSocket Lambda is built on Amazon Linux 2023 into the directory the placeholder warning names', () => {
    const dockerfile = fs.readFileSync(path.join(REPO_ROOT, 'docker', 'websocket-lambda.Dockerfile'), 'utf8');
    const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    // The runtime's own OS (glibc 2.34), then nothing but the executable.
    assert.equal(stages[0], 'public.ecr.aws/amazonlinux/amazonlinux:2023');
    assert.equal(stages[stages.length - 1], 'scratch');
    assert.match(dockerfile, /cargo build --release --locked -p iris-websocket-lambda\b/);
    assert.match(dockerfile, /install -D -m 0755 target\/release\/iris-websocket-lambda \/out\/bootstrap/);
    assert.match(dockerfile.split(/^FROM scratch$/m)[1], /^COPY --from=builder \/out\/bootstrap \/bootstrap$/m);
    // Every context path it copies is in its allowlist.
    const allowed = dockerIgnorePatterns('docker/websocket-lambda.Dockerfile');
    const copied = [...dockerfile.matchAll(/^COPY\s+(?!.*--from=)(?:--\S+\s+)*(.+)$/gm)].flatMap((m) => m[1].trim().split(/\s+/).slice(0, -1));
    assert.ok(copied.includes('Cargo.lock') && copied.includes('services'), `parsed ${copied}`);
    for (const entry of copied) assert.ok(allowed.includes(`!${entry}`), `${entry} is not in the allowlist`);
    assert.ok(!allowed.includes('!target') && allowed[0] === '*');
    // The build script writes there, for arm64 by default (the CDK default), and the warning's
    // path (relative to cdk/, where `npx cdk` runs) is that directory.
    const script = fs.readFileSync(path.join(REPO_ROOT, 'scripts', 'build-websocket-lambda.sh'), 'utf8');
    const output = /^OUTPUT=(\S+)$/m.exec(script)?.[1];
    assert.equal(output, 'target/lambda/iris-websocket-lambda');
    assert.match(script, /^DOCKERFILE=docker\/websocket-lambda\.Dockerfile$/m);
    assert.match(script, /architecture="\$\{1:-arm64\}"/);
    const warning = stack.node.metadata.map((m) => String(m.data)).find((w) => /placeholder/.test(w))!;
    const warned = /notifyLambdaCodePath=(\S+?)\s/.exec(warning)![1];
    assert.equal(path.resolve(CDK_DIR, warned), path.join(REPO_ROOT, output!));
  });

  test('fargateArchitecture=arm64 builds and runs the Fargate services on arm64; the GPU image stays amd64', () => {
    const arm = synth({ fargateArchitecture: 'arm64' });
    const armServices = servicesByRole(arm.json);
    for (const role of ['ingest', 'mesh', 'notify']) {
      assert.equal(resource(arm.json, armServices[role].taskDefinitionId).Properties.RuntimePlatform.CpuArchitecture, 'ARM64');
    }
    const armManifest = JSON.parse(fs.readFileSync(path.join(arm.assembly.directory, `${arm.stack.artifactId}.assets.json`), 'utf8'));
    const platforms = Object.values(armManifest.dockerImages).map((i: Json) => `${i.source.dockerFile} ${i.source.platform}`).sort();
    assert.deepStrictEqual(platforms, [
      'docker/segment-gpu.Dockerfile linux/amd64',
      'docker/service.Dockerfile linux/arm64',
      'docker/service.Dockerfile linux/arm64',
      'docker/service.Dockerfile linux/arm64',
    ]);
    assert.throws(() => synth({ fargateArchitecture: 'sparc' }), /must be x86_64 or arm64/);
  });
});

describe('outputs and context', () => {
  test('every endpoint and name is an output', () => {
    const outputs = Object.keys(json.Outputs);
    const expected = [
      'BucketName',
      'QueuePrefix',
      'JobsTableName',
      'ConnectionsTableName',
      'EventBusName',
      'EventBusArn',
      'EventArchiveName',
      'JobFailedRuleName',
      'AlertsTopicArn',
      'WebSocketUrl',
      'WebSocketCallbackUrl',
      'WebSocketApiId',
      'NotifyRoutesFunctionName',
      'ClusterName',
      'DataKeyArn',
      'RecordSaltSecretArn',
      'AccessLogBucketName',
      'TrailBucketName',
      ...QUEUE_ROLES.flatMap((r) => {
        const p = r.charAt(0).toUpperCase() + r.slice(1);
        return [`${p}QueueUrl`, `${p}DeadLetterQueueUrl`, `${p}ServiceName`];
      }),
    ];
    assert.deepStrictEqual(outputs.sort(), expected.sort());
  });

  test('bucketName overrides the bucket everywhere it is used', () => {
    const other = synth({ bucketName: 'acme-iris-prod' });
    const text = JSON.stringify(other.json);
    assert.ok(!text.includes(`"${contract.bucket.name}"`) && !text.includes(`:::${contract.bucket.name}`), 'no trace of the default name');
    other.template.hasResourceProperties('AWS::S3::Bucket', { BucketName: 'acme-iris-prod' });
    const otherServices = servicesByRole(other.json);
    for (const role of QUEUE_ROLES) assert.equal(otherServices[role].environment.IRIS_BUCKET, 'acme-iris-prod');
    assert.ok(allows(other.json, roleStatements(other.json, otherServices.ingest.taskRoleId), 's3:GetObject', 'arn:aws:s3:::acme-iris-prod/uploads/u/x'));
    const s3Sources = resourcesOfType(other.json, 'AWS::SQS::QueuePolicy')
      .flatMap(([, p]) => p.Properties.PolicyDocument.Statement)
      .filter((s: Json) => s.Principal?.Service === 's3.amazonaws.com')
      .map((s: Json) => resolve(other.json, s.Condition.ArnEquals['aws:SourceArn']));
    assert.deepStrictEqual([...new Set(s3Sources)], ['arn:aws:s3:::acme-iris-prod']);
  });

  test('synthesises offline: environment-agnostic, no context lookups, no cdk.context.json', () => {
    const artifact = assembly.getStackArtifact(stack.artifactId);
    assert.equal(artifact.environment.account, 'unknown-account');
    assert.equal(artifact.environment.region, 'unknown-region');
    assert.equal(assembly.manifest.missing, undefined, 'a lookup would be listed as missing context');
    assert.ok(!fs.existsSync(path.join(CDK_DIR, 'cdk.context.json')), 'cdk.context.json holds lookup results; this app makes none');
  });
});
