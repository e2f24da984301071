// Assertions on the synthesised CloudFormation template (no AWS account):
// what the deployment builds, and that it stays least-privilege.

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { App } from "aws-cdk-lib";
import { Match, Template } from "aws-cdk-lib/assertions";
import { WarrenStack, WarrenStackProps, defaultProps, AGENT_PORT, API_PORT } from "../lib/warren-stack";

function synth(over: Partial<WarrenStackProps> = {}): Template {
  const app = new App();
  const stack = new WarrenStack(app, "Warren", {
    ...defaultProps,
    ...over,
    env: { account: "123456789012", region: "us-east-1" },
  });
  return Template.fromStack(stack);
}

const template = synth();
const resources = (type: string) => Object.values(template.findResources(type)) as any[];

test("a VPC over two zones with public and private subnets", () => {
  template.resourceCountIs("AWS::EC2::VPC", 1);
  template.resourceCountIs("AWS::EC2::Subnet", 4);
  template.resourceCountIs("AWS::EC2::NatGateway", 1);
});

test("the cluster has the Auto Scaling group's capacity provider and Fargate, Fargate Spot", () => {
  template.hasResourceProperties("AWS::ECS::Cluster", { ClusterName: "warren" });
  const assoc = resources("AWS::ECS::ClusterCapacityProviderAssociations");
  assert.equal(assoc.length, 1);
  const names = JSON.stringify(assoc[0].Properties.CapacityProviders);
  for (const want of ["FARGATE", "FARGATE_SPOT"]) {
    assert.ok(names.includes(`"${want}"`), `${want} in ${names}`);
  }
  template.hasResourceProperties("AWS::ECS::CapacityProvider", {
    Name: "warren-workspaces",
    AutoScalingGroupProvider: {
      ManagedScaling: { Status: "ENABLED", TargetCapacity: 90 },
      ManagedTerminationProtection: "ENABLED",
    },
  });
});

test("workspace hosts: an on-demand base plus Spot, IMDSv2, encrypted disks", () => {
  template.hasResourceProperties("AWS::AutoScaling::AutoScalingGroup", {
    MinSize: "1",
    MaxSize: "20",
    CapacityRebalance: true,
    MixedInstancesPolicy: {
      InstancesDistribution: {
        OnDemandBaseCapacity: 1,
        OnDemandPercentageAboveBaseCapacity: 0,
        SpotAllocationStrategy: "price-capacity-optimized",
      },
      LaunchTemplate: { Overrides: [{ InstanceType: "c6i.xlarge" }] },
    },
  });
  template.hasResourceProperties("AWS::EC2::LaunchTemplate", {
    LaunchTemplateData: Match.objectLike({
      MetadataOptions: { HttpTokens: "required" },
      BlockDeviceMappings: [Match.objectLike({ Ebs: Match.objectLike({ Encrypted: true, VolumeType: "gp3" }) })],
    }),
  });
});

test("every instance type of the fleet is priced in warren's cost catalog", () => {
  const catalog = fs.readFileSync(path.join(__dirname, "..", "..", "..", "..", "crates", "warren-cost", "catalog.toml"), "utf8");
  const priced = new Set([...catalog.matchAll(/^instance\s*=\s*"([^"]+)"/gm)].map((m) => m[1]));
  assert.ok(priced.size > 0, "the catalog names instances");
  const asg = resources("AWS::AutoScaling::AutoScalingGroup")[0];
  const types = asg.Properties.MixedInstancesPolicy.LaunchTemplate.Overrides.map((o: any) => o.InstanceType);
  for (const t of types) {
    assert.ok(priced.has(t), `${t} is not in crates/warren-cost/catalog.toml (have: ${[...priced].join(", ")})`);
  }
});

test("the API: an internet-facing ALB without sticky sessions, health on /v1/health", () => {
  template.hasResourceProperties("AWS::ElasticLoadBalancingV2::LoadBalancer", {
    Scheme: "internet-facing",
    LoadBalancerAttributes: Match.arrayWith([{ Key: "idle_timeout.timeout_seconds", Value: "3600" }]),
  });
  template.hasResourceProperties("AWS::ElasticLoadBalancingV2::TargetGroup", {
    Port: API_PORT,
    HealthCheckPath: "/v1/health",
    TargetType: "ip",
  });
  for (const tg of resources("AWS::ElasticLoadBalancingV2::TargetGroup")) {
    const attrs = JSON.stringify(tg.Properties.TargetGroupAttributes ?? []);
    assert.ok(!attrs.includes('"stickiness.enabled","Value":"true"'), `no sticky sessions: ${attrs}`);
  }
});

test("warren replicas run the ECS backend against the cluster, Redis and the secrets", () => {
  template.hasResourceProperties("AWS::ECS::Service", { DesiredCount: 2, LaunchType: "FARGATE" });
  const td = resources("AWS::ECS::TaskDefinition")[0];
  const c = td.Properties.ContainerDefinitions[0];
  const env = Object.fromEntries(c.Environment.map((e: any) => [e.Name, e.Value]));
  const config = JSON.stringify(env.WARREN_CONFIG_TEXT);
  for (const want of ['provider = \\"ecs\\"', "execution_role_arn", "log_group", "capacity_providers", "agent_image"]) {
    assert.ok(config.includes(want), `config has ${want}: ${config}`);
  }
  assert.ok(JSON.stringify(env.WARREN_REDIS_URL).includes("PrimaryEndPoint.Address"), "Redis URL from ElastiCache");
  assert.deepEqual(c.Secrets.map((s: any) => s.Name), ["WARREN_ADMIN_KEY"], "the admin key comes from Secrets Manager");
  assert.ok(!JSON.stringify(td).includes("e2b_"), "no key in the template");
  synth({ replicas: 3 }).hasResourceProperties("AWS::ECS::Service", { DesiredCount: 3 });
});

test("Redis: two nodes in two zones, automatic failover, encrypted at rest", () => {
  template.hasResourceProperties("AWS::ElastiCache::ReplicationGroup", {
    Engine: "redis",
    NumCacheClusters: 2,
    AutomaticFailoverEnabled: true,
    MultiAZEnabled: true,
    AtRestEncryptionEnabled: true,
  });
});

test("network: the agent port only from warren, Redis only from warren", () => {
  const ingress = resources("AWS::EC2::SecurityGroupIngress").map((r) => r.Properties);
  const agent = ingress.filter((i) => i.FromPort === AGENT_PORT);
  assert.equal(agent.length, 1);
  assert.ok(agent[0].SourceSecurityGroupId, "from a security group, not a CIDR");
  const redis = ingress.filter((i) => i.FromPort === 6379);
  assert.equal(redis.length, 1);
  assert.ok(redis[0].SourceSecurityGroupId);
  // Nothing is open to the world but the load balancer.
  for (const sg of resources("AWS::EC2::SecurityGroup")) {
    for (const rule of sg.Properties.SecurityGroupIngress ?? []) {
      if (rule.CidrIp === "0.0.0.0/0") {
        assert.ok([80, 443].includes(rule.FromPort), `world-open port ${rule.FromPort}`);
      }
    }
  }
});

test("IAM: warren may run, stop and describe tasks in its cluster, and nothing broader", () => {
  const roles = template.findResources("AWS::IAM::Role");
  const warrenRole = Object.keys(roles).find((id) => String(roles[id].Properties.Description).startsWith("warren replicas"));
  assert.ok(warrenRole, "warren's task role");
  const policies = resources("AWS::IAM::Policy");
  const all = policies.flatMap((p) => p.Properties.PolicyDocument.Statement as any[]);
  for (const s of all) {
    for (const a of ([] as string[]).concat(s.Action)) {
      assert.ok(a !== "*" && !a.endsWith(":*"), `wildcard action ${a}`);
    }
  }
  // warren's own role: every statement accounted for.
  const statements = policies
    .filter((p) => JSON.stringify(p.Properties.Roles).includes(`"${warrenRole}"`))
    .flatMap((p) => p.Properties.PolicyDocument.Statement as any[]);
  assert.equal(statements.length, 6, JSON.stringify(statements));
  const bySid = (sid: string) => statements.find((s) => s.Sid === sid);
  const run = bySid("RunWorkspaceTasks");
  assert.equal(run.Action, "ecs:RunTask");
  assert.ok(JSON.stringify(run.Resource).includes("task-definition/warren-*"));
  assert.ok(run.Condition.ArnEquals["ecs:cluster"], "RunTask only in the warren cluster");
  const manage = bySid("ManageWorkspaceTasks");
  assert.deepEqual([...manage.Action].sort(), ["ecs:DescribeTasks", "ecs:StopTask"]);
  assert.ok(manage.Condition.ArnEquals["ecs:cluster"]);
  const pass = bySid("PassTheWorkspaceExecutionRole");
  assert.equal(pass.Condition.StringEquals["iam:PassedToService"], "ecs-tasks.amazonaws.com");
  assert.ok(!JSON.stringify(pass.Resource).includes('"*"'), "PassRole names one role");
  for (const s of statements) {
    const actions = ([] as string[]).concat(s.Action);
    if (JSON.stringify(s.Resource) === '"*"') {
      // Only actions AWS offers no resource-level control for.
      const allowed = new Set([
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
      ]);
      for (const a of actions) {
        assert.ok(allowed.has(a), `${a} on every resource`);
      }
    }
  }
  const managed = JSON.stringify(resources("AWS::IAM::Role").map((r) => r.Properties.ManagedPolicyArns ?? []));
  assert.ok(!managed.includes("AdministratorAccess") && !managed.includes("PowerUserAccess"), managed);
});

test("logs for warren and for the workspaces, with retention", () => {
  template.hasResourceProperties("AWS::Logs::LogGroup", { LogGroupName: "/warren/server", RetentionInDays: 30 });
  template.hasResourceProperties("AWS::Logs::LogGroup", { LogGroupName: "/warren/workspaces", RetentionInDays: 7 });
});

test("bad settings are refused with the reason", () => {
  assert.throws(() => synth({ instanceTypes: [] }), /at least one instance type/);
  assert.throws(() => synth({ replicas: 0 }), /replicas >= 1/);
});
