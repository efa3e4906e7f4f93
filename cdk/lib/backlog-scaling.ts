import { Duration, Stack } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

export interface BacklogScalingProps {
  readonly service: ecs.BaseService;
  readonly queue: sqs.IQueue;
  readonly maxTasks: number;
  /** How long after a scale-out before the next one may add more tasks (start-up time of a task). */
  readonly scaleOutCooldown: Duration;
  /** Minutes with no message visible or in flight before the service is scaled to zero. */
  readonly idleMinutes: number;
}

/**
 * Runs a queue worker service only while its queue has work: from zero tasks up to `maxTasks`.
 *
 * Two step-scaling policies, on purpose not one:
 *  - scale OUT on ApproximateNumberOfMessagesVisible (messages waiting for a worker): +1 task while
 *    any wait, +3 while 50 or more do, at most once per cooldown;
 *  - scale IN only to ZERO, and only when nothing is visible AND nothing is in flight
 *    (ApproximateNumberOfMessagesNotVisible) for `idleMinutes`.
 * A single policy on the visible count would stop tasks in the middle of a job (a message being
 * worked on is invisible), and a partial scale-in cannot choose which task ECS stops; both would
 * turn into redeliveries and, after IRIS_MAX_ATTEMPTS, into failed jobs.
 *
 * SQS publishes these metrics once a minute, and stops publishing for a queue with no activity for
 * six hours: the idle alarm treats missing data as idle, and the first message to a long-idle queue
 * can take several minutes to start a task (docs/deploy.md).
 */
export class BacklogScaling extends Construct {
  readonly target: appscaling.ScalableTarget;

  constructor(scope: Construct, id: string, props: BacklogScalingProps) {
    super(scope, id);
    const stack = Stack.of(this);
    this.target = new appscaling.ScalableTarget(this, 'Target', {
      serviceNamespace: appscaling.ServiceNamespace.ECS,
      scalableDimension: 'ecs:service:DesiredCount',
      resourceId: `service/${props.service.cluster.clusterName}/${props.service.serviceName}`,
      minCapacity: 0,
      maxCapacity: props.maxTasks,
      // ECS's service-linked role for Application Auto Scaling (what ecs.BaseService.autoScaleTaskCount
      // uses), rather than a new role per service.
      role: iam.Role.fromRoleArn(
        this,
        'ServiceLinkedRole',
        stack.formatArn({
          service: 'iam',
          region: '',
          resource: 'role/aws-service-role/ecs.application-autoscaling.amazonaws.com',
          resourceName: 'AWSServiceRoleForApplicationAutoScaling_ECSService',
        }),
      ),
    });
    this.target.node.addDependency(props.service);

    const minute = Duration.minutes(1);
    const visible = props.queue.metricApproximateNumberOfMessagesVisible({ period: minute, statistic: 'Maximum' });
    const inFlight = props.queue.metricApproximateNumberOfMessagesNotVisible({ period: minute, statistic: 'Maximum' });

    const scaleOut = new appscaling.StepScalingAction(this, 'ScaleOut', {
      scalingTarget: this.target,
      adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
      cooldown: props.scaleOutCooldown,
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
    });
    // Bounds are relative to the alarm threshold (1): [1, 50) waiting → +1, 50 or more → +3.
    scaleOut.addAdjustment({ lowerBound: 0, upperBound: 49, adjustment: 1 });
    scaleOut.addAdjustment({ lowerBound: 49, adjustment: 3 });
    new cloudwatch.Alarm(this, 'BacklogAlarm', {
      alarmDescription: `Messages are waiting in ${props.queue.queueName}: add a worker task`,
      metric: visible,
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    }).addAlarmAction(new cloudwatchActions.ApplicationScalingAction(scaleOut));

    const scaleToZero = new appscaling.StepScalingAction(this, 'ScaleToZero', {
      scalingTarget: this.target,
      adjustmentType: appscaling.AdjustmentType.EXACT_CAPACITY,
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
    });
    scaleToZero.addAdjustment({ upperBound: 0, adjustment: 0 });
    new cloudwatch.Alarm(this, 'IdleAlarm', {
      alarmDescription: `${props.queue.queueName} has had nothing visible or in flight for ${props.idleMinutes} minutes: stop every worker task`,
      metric: new cloudwatch.MathExpression({
        expression: 'visible + inFlight',
        usingMetrics: { visible, inFlight },
        period: minute,
        label: 'messages visible or in flight',
      }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: props.idleMinutes,
      // No data means SQS stopped reporting an inactive queue: nothing to do.
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    }).addAlarmAction(new cloudwatchActions.ApplicationScalingAction(scaleToZero));
  }
}
