// warren's phase-1 deployment on AWS, as the study recommends: workspaces as
// ECS tasks on an EC2 Auto Scaling group (an on-demand base plus Spot, with
// managed scaling) and on Fargate / Fargate Spot for batch classes; two or
// more warren replicas behind an Application Load Balancer, sharing state in
// ElastiCache Redis; least-privilege IAM; CloudWatch logs.
//
// Synthesising needs no AWS account (`npm run synth`); `cdk deploy` with the
// AWS CDK CLI stands it up.

import { Duration, RemovalPolicy, Stack, StackProps, CfnOutput } from "aws-cdk-lib";
import * as autoscaling from "aws-cdk-lib/aws-autoscaling";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import * as ecs from "aws-cdk-lib/aws-ecs";
import * as elasticache from "aws-cdk-lib/aws-elasticache";
import * as elbv2 from "aws-cdk-lib/aws-elasticloadbalancingv2";
import * as iam from "aws-cdk-lib/aws-iam";
import * as logs from "aws-cdk-lib/aws-logs";
import * as secrets from "aws-cdk-lib/aws-secretsmanager";
import { Construct } from "constructs";

/** The port warren's agent listens on inside every workspace. */
export const AGENT_PORT = 49983;
/** The port warren's API listens on. */
export const API_PORT = 7474;

export interface WarrenStackProps extends StackProps {
  /** The warren server image (built with `--features ecs`). */
  readonly warrenImage: string;
  /** An image holding the static agent at /warren-agent. */
  readonly agentImage: string;
  /** Template name → image reference for workspaces. */
  readonly templates: Record<string, string>;
  /**
   * Instance types of the workspace Auto Scaling group, first preferred.
   * Each must be priced in warren's cost catalog
   * (crates/warren-cost/catalog.toml), so `warren cost` describes this fleet.
   */
  readonly instanceTypes: string[];
  /** On-demand instances always kept (the Reserved Instance base). */
  readonly onDemandBase: number;
  /** Percent of instances above the base that are on-demand (the rest Spot). */
  readonly onDemandPercentAboveBase: number;
  readonly minInstances: number;
  readonly maxInstances: number;
  /** warren replicas behind the load balancer. */
  readonly replicas: number;
  /** ElastiCache node type of the state store. */
  readonly redisNodeType: string;
}

export const defaultProps: WarrenStackProps = {
  warrenImage: "ghcr.io/example/warren:0.1",
  agentImage: "ghcr.io/example/warren-agent:0.1",
  templates: { base: "public.ecr.aws/docker/library/debian:12" },
  instanceTypes: ["c6i.xlarge"],
  onDemandBase: 1,
  onDemandPercentAboveBase: 0,
  minInstances: 1,
  maxInstances: 20,
  replicas: 2,
  redisNodeType: "cache.t4g.small",
};

export class WarrenStack extends Stack {
  readonly cluster: ecs.Cluster;
  readonly workspaceCapacity: ecs.AsgCapacityProvider;
  readonly warrenTaskRole: iam.Role;
  readonly workspaceExecutionRole: iam.Role;

  constructor(scope: Construct, id: string, props: WarrenStackProps) {
    super(scope, id, props);
    if (props.instanceTypes.length === 0) {
      throw new Error("instanceTypes: at least one instance type");
    }
    if (props.replicas < 1 || props.onDemandBase < 0 || props.minInstances > props.maxInstances) {
      throw new Error("replicas >= 1, onDemandBase >= 0 and minInstances <= maxInstances");
    }

    const vpc = new ec2.Vpc(this, "Vpc", {
      maxAzs: 2,
      natGateways: 1,
      subnetConfiguration: [
        { name: "public", subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 },
        // Workspaces get one ENI each (awsvpc): a large private range.
        { name: "workspaces", subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 },
      ],
    });

    // Who may talk to whom: the ALB to warren's API, warren to the agents
    // and to Redis; workspaces reach nothing of warren's.
    const albSg = new ec2.SecurityGroup(this, "AlbSg", { vpc, description: "warren API load balancer" });
    albSg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), "HTTPS from clients");
    albSg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(80), "HTTP from clients (redirect to HTTPS in front)");
    const warrenSg = new ec2.SecurityGroup(this, "WarrenSg", { vpc, description: "warren replicas" });
    warrenSg.addIngressRule(albSg, ec2.Port.tcp(API_PORT), "API from the load balancer");
    warrenSg.addIngressRule(warrenSg, ec2.Port.tcp(API_PORT), "requests relayed between replicas");
    const workspaceSg = new ec2.SecurityGroup(this, "WorkspaceSg", {
      vpc,
      description: "warren workspaces (one ENI per task)",
      allowAllOutbound: true,
    });
    workspaceSg.addIngressRule(warrenSg, ec2.Port.tcp(AGENT_PORT), "the agent, from warren only");
    const redisSg = new ec2.SecurityGroup(this, "RedisSg", {
      vpc,
      description: "warren state store",
      allowAllOutbound: false,
    });
    redisSg.addIngressRule(warrenSg, ec2.Port.tcp(6379), "Redis from warren only");

    // The cluster, with Fargate and Fargate Spot for batch classes.
    this.cluster = new ecs.Cluster(this, "Cluster", {
      vpc,
      clusterName: "warren",
      enableFargateCapacityProviders: true,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });

    // Interactive workspaces: a mixed-instances group, an on-demand base
    // (cover it with Reserved Instances) plus Spot above it.
    const instanceRole = new iam.Role(this, "InstanceRole", {
      assumedBy: new iam.ServicePrincipal("ec2.amazonaws.com"),
      managedPolicies: [
        iam.ManagedPolicy.fromAwsManagedPolicyName("service-role/AmazonEC2ContainerServiceforEC2Role"),
        iam.ManagedPolicy.fromAwsManagedPolicyName("AmazonSSMManagedInstanceCore"),
      ],
    });
    const userData = ec2.UserData.forLinux();
    userData.addCommands(
      `echo ECS_CLUSTER=${this.cluster.clusterName} >> /etc/ecs/ecs.config`,
      // Spot interruptions drain tasks; warren marks their workspaces failed.
      "echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config",
      // awsvpc density beyond the ENI limit (trunking must be on in the account).
      "echo ECS_ENABLE_TASK_ENI=true >> /etc/ecs/ecs.config",
    );
    const launchTemplate = new ec2.LaunchTemplate(this, "WorkspaceHosts", {
      machineImage: ecs.EcsOptimizedImage.amazonLinux2023(),
      instanceType: new ec2.InstanceType(props.instanceTypes[0]),
      role: instanceRole,
      securityGroup: workspaceSg,
      userData,
      requireImdsv2: true,
      blockDevices: [
        {
          deviceName: "/dev/xvda",
          volume: ec2.BlockDeviceVolume.ebs(100, { volumeType: ec2.EbsDeviceVolumeType.GP3, encrypted: true }),
        },
      ],
    });
    const asg = new autoscaling.AutoScalingGroup(this, "WorkspaceAsg", {
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      minCapacity: props.minInstances,
      maxCapacity: props.maxInstances,
      mixedInstancesPolicy: {
        launchTemplate,
        launchTemplateOverrides: props.instanceTypes.map((t) => ({ instanceType: new ec2.InstanceType(t) })),
        instancesDistribution: {
          onDemandBaseCapacity: props.onDemandBase,
          onDemandPercentageAboveBaseCapacity: props.onDemandPercentAboveBase,
          spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
        },
      },
      capacityRebalance: true,
    });
    this.workspaceCapacity = new ecs.AsgCapacityProvider(this, "WorkspaceCapacity", {
      capacityProviderName: "warren-workspaces",
      autoScalingGroup: asg,
      enableManagedScaling: true,
      targetCapacityPercent: 90,
      enableManagedTerminationProtection: true,
      enableManagedDraining: true,
    });
    this.cluster.addAsgCapacityProvider(this.workspaceCapacity, { spotInstanceDraining: true });

    // Logs: warren's own and the workspaces' output.
    const warrenLogs = new logs.LogGroup(this, "WarrenLogs", {
      logGroupName: "/warren/server",
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const workspaceLogs = new logs.LogGroup(this, "WorkspaceLogs", {
      logGroupName: "/warren/workspaces",
      retention: logs.RetentionDays.ONE_WEEK,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // The role ECS uses to start workspace tasks (pull images, write logs).
    this.workspaceExecutionRole = new iam.Role(this, "WorkspaceExecutionRole", {
      assumedBy: new iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName("service-role/AmazonECSTaskExecutionRolePolicy")],
    });
    workspaceLogs.grantWrite(this.workspaceExecutionRole);

    // warren's own permissions: exactly what the ECS backend calls.
    this.warrenTaskRole = new iam.Role(this, "WarrenTaskRole", {
      assumedBy: new iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
      description: "warren replicas: run, stop and describe workspace tasks in the warren cluster",
    });
    const taskDefArn = this.formatArn({ service: "ecs", resource: "task-definition", resourceName: "warren-*" });
    const clusterCondition = { ArnEquals: { "ecs:cluster": this.cluster.clusterArn } };
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: "RunWorkspaceTasks",
        actions: ["ecs:RunTask"],
        resources: [taskDefArn],
        conditions: clusterCondition,
      }),
    );
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: "ManageWorkspaceTasks",
        actions: ["ecs:StopTask", "ecs:DescribeTasks"],
        resources: [this.formatArn({ service: "ecs", resource: "task", resourceName: "warren/*" })],
        conditions: clusterCondition,
      }),
    );
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: "ListWorkspaceTasks",
        actions: ["ecs:ListTasks"],
        resources: [this.formatArn({ service: "ecs", resource: "container-instance", resourceName: "warren/*" })],
        conditions: clusterCondition,
      }),
    );
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: "TagWorkspaceTasks",
        actions: ["ecs:TagResource"],
        resources: [
          this.formatArn({ service: "ecs", resource: "task", resourceName: "warren/*" }),
          taskDefArn,
        ],
        conditions: { StringEquals: { "ecs:CreateAction": ["RunTask", "RegisterTaskDefinition"] } },
      }),
    );
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        // These two accept no resource-level restriction.
        sid: "WorkspaceTaskDefinitions",
        actions: ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"],
        resources: ["*"],
      }),
    );
    this.warrenTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: "PassTheWorkspaceExecutionRole",
        actions: ["iam:PassRole"],
        resources: [this.workspaceExecutionRole.roleArn],
        conditions: { StringEquals: { "iam:PassedToService": "ecs-tasks.amazonaws.com" } },
      }),
    );

    // The state store: Redis with a replica in another zone and automatic
    // failover (warren expects durable writes: AOF on self-hosted Redis,
    // Multi-AZ replication here).
    const redisSubnets = new elasticache.CfnSubnetGroup(this, "RedisSubnets", {
      description: "warren state store",
      subnetIds: vpc.privateSubnets.map((s) => s.subnetId),
    });
    const redis = new elasticache.CfnReplicationGroup(this, "Redis", {
      replicationGroupDescription: "warren state: workspaces, events, leases, replicas",
      engine: "redis",
      engineVersion: "7.1",
      cacheNodeType: props.redisNodeType,
      numCacheClusters: 2,
      automaticFailoverEnabled: true,
      multiAzEnabled: true,
      atRestEncryptionEnabled: true,
      cacheSubnetGroupName: redisSubnets.ref,
      securityGroupIds: [redisSg.securityGroupId],
      snapshotRetentionLimit: 7,
    });

    // warren's admin key, generated at deploy time, never in the template.
    const adminKey = new secrets.Secret(this, "AdminKey", {
      description: "warren admin API key",
      generateSecretString: { passwordLength: 48, excludePunctuation: true, includeSpace: false },
    });

    // The warren replicas: Fargate tasks behind the load balancer.
    const serverDef = new ecs.FargateTaskDefinition(this, "WarrenServer", {
      cpu: 1024,
      memoryLimitMiB: 2048,
      taskRole: this.warrenTaskRole,
    });
    adminKey.grantRead(serverDef.obtainExecutionRole());
    const config = [
      'provider = "ecs"',
      `listen = "0.0.0.0:${API_PORT}"`,
      "[ecs]",
      `cluster = "${this.cluster.clusterName}"`,
      `region = "${this.region}"`,
      `subnets = [${vpc.privateSubnets.map((s) => `"${s.subnetId}"`).join(", ")}]`,
      `security_groups = ["${workspaceSg.securityGroupId}"]`,
      `agent_image = "${props.agentImage}"`,
      `execution_role_arn = "${this.workspaceExecutionRole.roleArn}"`,
      `log_group = "${workspaceLogs.logGroupName}"`,
      "[[ecs.capacity_providers]]",
      `name = "${this.workspaceCapacity.capacityProviderName}"`,
      "weight = 1",
      "[ecs.images]",
      ...Object.entries(props.templates).map(([name, image]) => `"${name}" = "${image}"`),
    ].join("\n");
    serverDef.addContainer("warren", {
      image: ecs.ContainerImage.fromRegistry(props.warrenImage),
      essential: true,
      entryPoint: ["/bin/sh", "-c"],
      command: ['printf "%s\\n" "$WARREN_CONFIG_TEXT" > /tmp/warren.toml && exec warren serve --config /tmp/warren.toml'],
      environment: {
        WARREN_CONFIG_TEXT: config,
        WARREN_REDIS_URL: `redis://${redis.attrPrimaryEndPointAddress}:${redis.attrPrimaryEndPointPort}/`,
        WARREN_DATA_DIR: "/var/lib/warren",
      },
      secrets: { WARREN_ADMIN_KEY: ecs.Secret.fromSecretsManager(adminKey) },
      portMappings: [{ containerPort: API_PORT }],
      logging: ecs.LogDrivers.awsLogs({ logGroup: warrenLogs, streamPrefix: "warren" }),
    });
    const service = new ecs.FargateService(this, "WarrenService", {
      cluster: this.cluster,
      taskDefinition: serverDef,
      desiredCount: props.replicas,
      securityGroups: [warrenSg],
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { rollback: true },
    });

    const alb = new elbv2.ApplicationLoadBalancer(this, "Api", {
      vpc,
      internetFacing: true,
      securityGroup: albSg,
      // Long-lived exec streams and PTYs.
      idleTimeout: Duration.seconds(3600),
    });
    const listener = alb.addListener("Http", { port: 80, open: false });
    listener.addTargets("Warren", {
      port: API_PORT,
      protocol: elbv2.ApplicationProtocol.HTTP,
      targets: [service],
      // No sticky sessions: any replica serves any workspace.
      healthCheck: { path: "/v1/health", healthyHttpCodes: "200", interval: Duration.seconds(10) },
      deregistrationDelay: Duration.seconds(30),
    });

    new CfnOutput(this, "ApiUrl", { value: `http://${alb.loadBalancerDnsName}` });
    new CfnOutput(this, "AdminKeySecret", { value: adminKey.secretArn });
    new CfnOutput(this, "ClusterName", { value: this.cluster.clusterName });
  }
}
