#!/usr/bin/env node
// The CDK app: `npx cdk synth|deploy` from cdk/ (see docs/deploy.md). Context keys: lib/app.ts.
import { App } from 'aws-cdk-lib';
import { buildIrisApp } from '../lib/app';

buildIrisApp(new App());
