import * as path from 'path';

// Compiled files live in cdk/dist/{bin,lib,test}/, sources in cdk/{bin,lib,test}/: two levels up
// is cdk/ from either.
export const CDK_DIR = path.resolve(__dirname, '..', '..');

/** The repository root: the Docker build context of every image. */
export const REPO_ROOT = path.resolve(CDK_DIR, '..');

/** What `iris aws contract` prints; a Rust test keeps it equal to what `iris aws bootstrap` creates. */
export const CONTRACT_PATH = path.join(CDK_DIR, 'pipeline-contract.json');

/** The stand-in for the notify-routes Lambda until the notify issue builds the real one. */
export const PLACEHOLDER_LAMBDA_DIR = path.join(CDK_DIR, 'assets', 'notify-lambda-placeholder');

/** Dockerfiles, relative to the build context (REPO_ROOT). */
export const SERVICE_DOCKERFILE = 'docker/service.Dockerfile';
export const SEGMENT_GPU_DOCKERFILE = 'docker/segment-gpu.Dockerfile';
