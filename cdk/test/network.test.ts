// Security posture, network side: workers in isolated subnets without public addresses, no NAT
// gateway, VPC endpoints for every AWS API the workers call, HTTPS-only egress, flow logs.
import * as assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { INTERFACE_ENDPOINTS } from '../lib/network';
import { Json, REGION, referencedId, resolve, resource, resourcesOfType, servicesByRole, synth } from './helpers';

const { json, template } = synth();
const services = servicesByRole(json);

/** The subnet's kind as CDK tags it: Public, Private or Isolated. */
function subnetType(subnetRef: Json): string {
  const subnet = resource(json, referencedId(subnetRef));
  assert.equal(subnet.Type, 'AWS::EC2::Subnet');
  return subnet.Properties.Tags.find((t: Json) => t.Key === 'aws-cdk:subnet-type').Value;
}
const subnetsOfType = (type: string) =>
  resourcesOfType(json, 'AWS::EC2::Subnet')
    .filter(([id]) => subnetType({ Ref: id }) === type)
    .map(([id]) => id);
const routeTableOf = (subnetId: string) =>
  resourcesOfType(json, 'AWS::EC2::SubnetRouteTableAssociation').find(([, a]) => a.Properties.SubnetId.Ref === subnetId)![1].Properties.RouteTableId.Ref;
const endpoints = resourcesOfType(json, 'AWS::EC2::VPCEndpoint');
const endpointService = (e: Json) => resolve(json, e.Properties.ServiceName);
const securityGroupOf = (description: RegExp) => {
  const found = resourcesOfType(json, 'AWS::EC2::SecurityGroup').filter(([, g]) => description.test(g.Properties.GroupDescription));
  assert.equal(found.length, 1, `one security group matching ${description}`);
  return found[0][0];
};
const egressOf = (groupId: string): Json[] => [
  ...(resource(json, groupId).Properties.SecurityGroupEgress ?? []),
  ...resourcesOfType(json, 'AWS::EC2::SecurityGroupEgress')
    .filter(([, e]) => referencedId(e.Properties.GroupId) === groupId)
    .map(([, e]) => e.Properties),
];
const ingressOf = (groupId: string): Json[] => [
  ...(resource(json, groupId).Properties.SecurityGroupIngress ?? []),
  ...resourcesOfType(json, 'AWS::EC2::SecurityGroupIngress')
    .filter(([, e]) => referencedId(e.Properties.GroupId) === groupId)
    .map(([, e]) => e.Properties),
];
const workerGroups = () => [securityGroupOf(/^IRIS Fargate workers/), securityGroupOf(/^IRIS GPU container instances/)];
const endpointGroup = () => securityGroupOf(/^IRIS interface VPC endpoints/);

describe('subnets and addresses', () => {
  test('no NAT gateway, and the isolated subnets have no route out of the VPC', () => {
    template.resourceCountIs('AWS::EC2::NatGateway', 0);
    const isolated = subnetsOfType('Isolated');
    assert.equal(isolated.length, 2, 'two isolated subnets (two AZs)');
    assert.deepStrictEqual(subnetsOfType('Private'), [], 'no private-with-egress subnets');
    for (const subnet of isolated) {
      assert.equal(resource(json, subnet).Properties.MapPublicIpOnLaunch, false, subnet);
      const table = routeTableOf(subnet);
      const routes = resourcesOfType(json, 'AWS::EC2::Route').filter(([, r]) => r.Properties.RouteTableId.Ref === table);
      assert.deepStrictEqual(routes, [], `${subnet}: routes ${JSON.stringify(routes)}`);
    }
  });

  for (const role of ['ingest', 'mesh'] as const) {
    test(`${role} runs in the isolated subnets, without a public IP`, () => {
      const network = resource(json, services[role].serviceId).Properties.NetworkConfiguration.AwsvpcConfiguration;
      assert.equal(network.AssignPublicIp, 'DISABLED');
      assert.ok(network.Subnets.length > 0);
      for (const subnet of network.Subnets) assert.equal(subnetType(subnet), 'Isolated');
      assert.deepStrictEqual(network.SecurityGroups.map(referencedId), [workerGroups()[0]]);
    });
  }

  test('the GPU instances (segment) run in the isolated subnets, without a public IP', () => {
    const groups = resourcesOfType(json, 'AWS::AutoScaling::AutoScalingGroup');
    assert.equal(groups.length, 2);
    for (const [id, group] of groups) {
      for (const subnet of group.Properties.VPCZoneIdentifier) assert.equal(subnetType(subnet), 'Isolated', id);
      const lt = resource(json, referencedId(group.Properties.MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification.LaunchTemplateId));
      const interfaces: Json[] = lt.Properties.LaunchTemplateData.NetworkInterfaces;
      assert.deepStrictEqual(interfaces.map((i) => i.AssociatePublicIpAddress), [false], id);
      assert.deepStrictEqual(interfaces[0].Groups.map(referencedId), [workerGroups()[1]]);
    }
  });

  test('notify alone has a public IP (the WebSocket Management API is public only): public subnet, HTTPS out only', () => {
    const withPublicIp = Object.entries(services).filter(
      ([, s]) => resource(json, s.serviceId).Properties.NetworkConfiguration?.AwsvpcConfiguration?.AssignPublicIp === 'ENABLED',
    );
    assert.deepStrictEqual(withPublicIp.map(([role]) => role), ['notify']);
    const network = resource(json, services.notify.serviceId).Properties.NetworkConfiguration.AwsvpcConfiguration;
    for (const subnet of network.Subnets) assert.equal(subnetType(subnet), 'Public');
    const [group] = network.SecurityGroups.map(referencedId);
    assert.deepStrictEqual(ingressOf(group), []);
    for (const rule of egressOf(group)) assert.deepStrictEqual([rule.IpProtocol, rule.FromPort, rule.ToPort], ['tcp', 443, 443]);
    // Nothing in the public subnets gets an address it did not ask for.
    for (const subnet of subnetsOfType('Public')) assert.equal(resource(json, subnet).Properties.MapPublicIpOnLaunch, false);
  });
});

describe('VPC endpoints', () => {
  test('gateway endpoints for S3 and DynamoDB, routed from every subnet', () => {
    const gateways = endpoints.filter(([, e]) => e.Properties.VpcEndpointType === 'Gateway');
    assert.deepStrictEqual(gateways.map(([, e]) => endpointService(e)).sort(), [`com.amazonaws.${REGION}.dynamodb`, `com.amazonaws.${REGION}.s3`]);
    const allTables = resourcesOfType(json, 'AWS::EC2::Subnet').map(([id]) => routeTableOf(id)).sort();
    for (const [id, e] of gateways) assert.deepStrictEqual(e.Properties.RouteTableIds.map(referencedId).sort(), allTables, id);
  });

  test('interface endpoints for SQS, EventBridge, ECR (api, dkr), CloudWatch Logs, the ECS agent and Secrets Manager: isolated subnets, private DNS', () => {
    const interfaces = endpoints.filter(([, e]) => e.Properties.VpcEndpointType === 'Interface');
    const names = interfaces.map(([, e]) => endpointService(e).replace(`com.amazonaws.${REGION}.`, '')).sort();
    assert.deepStrictEqual(names, ['ecr.api', 'ecr.dkr', 'ecs', 'ecs-agent', 'ecs-telemetry', 'events', 'logs', 'secretsmanager', 'sqs']);
    assert.equal(interfaces.length, Object.keys(INTERFACE_ENDPOINTS).length);
    for (const [id, e] of interfaces) {
      assert.equal(e.Properties.PrivateDnsEnabled, true, id);
      for (const subnet of e.Properties.SubnetIds) assert.equal(subnetType(subnet), 'Isolated', id);
      assert.deepStrictEqual(e.Properties.SecurityGroupIds.map(referencedId), [endpointGroup()], id);
    }
  });

  test("a Secrets Manager interface endpoint in the VPC: ECS fetches ingest's IRIS_RECORD_SALT through it, from the isolated subnets", () => {
    const found = endpoints.filter(([, e]) => endpointService(e) === `com.amazonaws.${REGION}.secretsmanager`);
    assert.equal(found.length, 1);
    const [id, e] = found[0];
    assert.equal(e.Properties.VpcEndpointType, 'Interface', id);
    assert.equal(referencedId(e.Properties.VpcId), resourcesOfType(json, 'AWS::EC2::VPC')[0][0]);
    assert.equal(e.Properties.PrivateDnsEnabled, true, id);
    assert.deepStrictEqual(e.Properties.SubnetIds.map(referencedId).sort(), subnetsOfType('Isolated').sort());
    assert.deepStrictEqual(e.Properties.SecurityGroupIds.map(referencedId), [endpointGroup()]);
    // Fargate fetches task secrets through the task's own network interface: ingest's group reaches the endpoint group.
    assert.ok(Object.keys(services.ingest.secrets).length > 0, 'ingest has a secret to fetch');
    const ingestGroup = referencedId(resource(json, services.ingest.serviceId).Properties.NetworkConfiguration.AwsvpcConfiguration.SecurityGroups[0]);
    assert.ok(
      ingressOf(endpointGroup()).some((r) => referencedId(r.SourceSecurityGroupId) === ingestGroup && r.FromPort === 443),
      'the endpoint group admits HTTPS from ingest',
    );
  });

  test('no execute-api endpoint: with private DNS it would take over the public WebSocket API name notify posts to', () => {
    assert.ok(!endpoints.some(([, e]) => endpointService(e).endsWith('.execute-api')));
  });

  test('the S3 and DynamoDB prefix lists are read at deploy time, in the deployment region, with a read-only call', () => {
    const lookups = resourcesOfType(json, 'Custom::AWS').map(([id, r]) => [id, JSON.parse(resolve(json, r.Properties.Create))] as const);
    const names = lookups.map(([, call]) => call.parameters.Filters[0].Values[0]).sort();
    assert.deepStrictEqual(names, [`com.amazonaws.${REGION}.dynamodb`, `com.amazonaws.${REGION}.s3`]);
    for (const [id, call] of lookups) {
      assert.deepStrictEqual([call.service, call.action], ['EC2', 'DescribeManagedPrefixLists'], id);
      const update = JSON.parse(resolve(json, resource(json, id).Properties.Update));
      assert.deepStrictEqual(update, call, `${id}: the same call on update`);
    }
    // The lookup function's role may do that and nothing else (one policy per lookup, same role).
    const functionId = referencedId(resource(json, lookups[0][0]).Properties.ServiceToken);
    const roleId = referencedId(resource(json, functionId).Properties.Role);
    const policies = resourcesOfType(json, 'AWS::IAM::Policy').filter(([, p]) => p.Properties.Roles.some((r: Json) => r.Ref === roleId));
    assert.equal(policies.length, lookups.length);
    for (const [id, p] of policies) {
      assert.deepStrictEqual(p.Properties.PolicyDocument.Statement.map((s: Json) => s.Action), ['ec2:DescribeManagedPrefixLists'], id);
    }
  });
});

describe('security groups', () => {
  test('worker groups (Fargate, GPU instances): no inbound; outbound HTTPS only, to the endpoint group and the S3 and DynamoDB prefix lists', () => {
    const prefixLookups = new Set(resourcesOfType(json, 'Custom::AWS').map(([id]) => id));
    for (const group of workerGroups()) {
      assert.deepStrictEqual(ingressOf(group), [], `${group}: inbound`);
      const egress = egressOf(group);
      const destinations = egress.map((rule) => {
        assert.deepStrictEqual([rule.IpProtocol, rule.FromPort, rule.ToPort], ['tcp', 443, 443], `${group}: ${JSON.stringify(rule)}`);
        assert.equal(rule.CidrIp, undefined, `${group}: egress to a CIDR ${rule.CidrIp}`);
        assert.equal(rule.CidrIpv6, undefined, `${group}: egress to a CIDR ${rule.CidrIpv6}`);
        if (rule.DestinationSecurityGroupId) return `sg:${referencedId(rule.DestinationSecurityGroupId)}`;
        const lookup = referencedId(rule.DestinationPrefixListId);
        assert.ok(prefixLookups.has(lookup), `${group}: prefix list from ${lookup}`);
        return `pl:${lookup}`;
      });
      assert.deepStrictEqual(destinations.sort(), [...[...prefixLookups].map((id) => `pl:${id}`), `sg:${endpointGroup()}`].sort(), group);
    }
  });

  test('the endpoint group admits HTTPS from the worker and notify groups only, and sends nothing', () => {
    const sources = ingressOf(endpointGroup()).map((rule) => {
      assert.deepStrictEqual([rule.IpProtocol, rule.FromPort, rule.ToPort], ['tcp', 443, 443]);
      assert.equal(rule.CidrIp, undefined);
      return referencedId(rule.SourceSecurityGroupId);
    });
    const notifyGroup = referencedId(resource(json, services.notify.serviceId).Properties.NetworkConfiguration.AwsvpcConfiguration.SecurityGroups[0]);
    assert.deepStrictEqual(sources.sort(), [...workerGroups(), notifyGroup].sort());
    // CDK's placeholder rule that matches no traffic (it removes the default allow-all egress).
    assert.deepStrictEqual(egressOf(endpointGroup()).map((r) => r.CidrIp), ['255.255.255.255/32']);
  });

  test('no security group allows all traffic out, or anything in from anywhere', () => {
    for (const [id] of resourcesOfType(json, 'AWS::EC2::SecurityGroup')) {
      for (const rule of egressOf(id)) assert.ok(!(rule.IpProtocol === '-1' && rule.CidrIp === '0.0.0.0/0'), `${id}: all traffic out`);
      for (const rule of ingressOf(id)) assert.ok(rule.CidrIp !== '0.0.0.0/0', `${id}: open inbound`);
    }
  });
});

describe('flow logs', () => {
  test('the VPC records all traffic to an encrypted, retained log group', () => {
    const logs = resourcesOfType(json, 'AWS::EC2::FlowLog');
    assert.equal(logs.length, 1);
    const props = logs[0][1].Properties;
    assert.equal(props.ResourceType, 'VPC');
    assert.equal(props.TrafficType, 'ALL');
    assert.equal(referencedId(props.ResourceId), resourcesOfType(json, 'AWS::EC2::VPC')[0][0]);
    const group = resource(json, referencedId(props.LogGroupName));
    assert.equal(group.Type, 'AWS::Logs::LogGroup');
    assert.equal(group.DeletionPolicy, 'Retain');
    assert.ok(group.Properties.KmsKeyId);
  });
});
