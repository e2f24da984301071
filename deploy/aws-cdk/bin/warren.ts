// The CDK app: `npm run synth` writes the CloudFormation template to
// cdk.out/ without an AWS account; `npx cdk deploy` (AWS CDK CLI) deploys it.
// Settings come from CDK context (`-c warrenImage=…`) or the defaults.

import { App } from "aws-cdk-lib";
import { WarrenStack, WarrenStackProps, defaultProps } from "../lib/warren-stack";

const app = new App({ outdir: process.env.CDK_OUTDIR ?? "cdk.out" });
const ctx = (key: keyof WarrenStackProps) => app.node.tryGetContext(key as string);
const props: WarrenStackProps = {
  ...defaultProps,
  warrenImage: ctx("warrenImage") ?? defaultProps.warrenImage,
  agentImage: ctx("agentImage") ?? defaultProps.agentImage,
  replicas: Number(ctx("replicas") ?? defaultProps.replicas),
  maxInstances: Number(ctx("maxInstances") ?? defaultProps.maxInstances),
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION ?? "us-east-1" },
};
new WarrenStack(app, "Warren", props);
app.synth();
