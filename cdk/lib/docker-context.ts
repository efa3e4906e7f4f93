import * as fs from 'fs';
import * as path from 'path';
import { REPO_ROOT } from './paths';

/**
 * The ignore patterns of a Dockerfile's build context, read from `<Dockerfile>.dockerignore` next
 * to it: the file BuildKit itself uses for that Dockerfile. The CDK app passes the same patterns
 * when it stages the context (the repository root), so `cdk deploy` and a plain `docker build`
 * send the builder exactly the same files, and neither ever copies cdk.out into an asset.
 */
export function dockerIgnorePatterns(dockerfile: string, root: string = REPO_ROOT): string[] {
  const file = path.join(root, `${dockerfile}.dockerignore`);
  if (!fs.existsSync(file)) {
    throw new Error(`${file} is missing: every Dockerfile under docker/ needs its own context allowlist`);
  }
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith('#'));
}
