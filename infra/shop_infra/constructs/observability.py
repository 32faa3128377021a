"""What an operator sees of a stage: one CloudWatch dashboard, alarms on the figures that reveal its
bottleneck, an SNS topic every alarm notifies (with an e-mail subscription when an address is
given), and a cost allocation tag on every resource."""

from __future__ import annotations

from collections.abc import Sequence

import jsii
from aws_cdk import (
    AspectPriority,
    Aspects,
    CfnResource,
    Duration,
    IAspect,
    Stack,
    TagManager,
    Tags,
    Token,
)
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from ..nag import acknowledge

PERIOD = Duration.minutes(1)
COST_TAG = "shop:stage"
"""Cost allocation tag on every taggable resource; its value is the stage's name. Activate it once
under Billing > Cost allocation tags to see costs by stage."""
_PLAIN_TAGGABLE = {"AWS::IAM::Role", "AWS::Lambda::Function"}
"""Taggable types that aws-cdk-lib also emits as plain CfnResources (its custom resource
providers), which `Tags` does not reach."""
CLOUDFRONT_METRICS_REGION = "us-east-1"
"""CloudFront publishes its metrics in us-east-1 only (dimension Region=Global)."""


def add_cost_tag(scope: Construct, value: str) -> None:
    """Tag every taggable resource under `scope` with COST_TAG = value."""
    Tags.of(scope).add(COST_TAG, value)
    Aspects.of(scope).add(_TagPlainResources(value), priority=AspectPriority.MUTATING)


@jsii.implements(IAspect)
class _TagPlainResources:
    def __init__(self, value: str) -> None:
        self._value = value

    def visit(self, node: object) -> None:
        if (
            isinstance(node, CfnResource)
            and node.cfn_resource_type in _PLAIN_TAGGABLE
            and not TagManager.is_taggable(node)
            and not TagManager.is_taggable_v2(node)
        ):
            node.add_property_override("Tags", [{"Key": COST_TAG, "Value": self._value}])


def metric(
    namespace: str, name: str, dimensions: dict[str, str], *, statistic: str = "Average"
) -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=namespace,
        metric_name=name,
        dimensions_map=dimensions,
        statistic=statistic,
        period=PERIOD,
    )


def worst(label: str, metrics: Sequence[cloudwatch.IMetric]) -> cloudwatch.IMetric:
    """The highest of several series (instances, groups, replicas) as one alarmable series."""
    if len(metrics) == 1:
        return metrics[0]
    names = {f"m{index}": each for index, each in enumerate(metrics)}
    return cloudwatch.MathExpression(
        expression=f"MAX([{', '.join(names)}])", using_metrics=names, label=label, period=PERIOD
    )


class Observability(Construct):
    def __init__(
        self, scope: Construct, id: str, *, title: str, alarm_email: str | None = None
    ) -> None:
        super().__init__(scope, id)
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.hours(3),
            widgets=[[cloudwatch.TextWidget(markdown=f"# {title}", width=24, height=1)]],
        )
        self.alarms: list[cloudwatch.Alarm] = []
        self.topic = sns.Topic(self, "Alarms", display_name=f"{title}: alarms", enforce_ssl=True)
        acknowledge(
            self.topic,
            id="AwsSolutions-SNS2",
            reason="CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed "
            "SNS key, and a customer-managed key for alarm texts (names and thresholds, no data "
            "of the shop's) would add a key policy and a monthly fee to a stack that lives hours.",
        )
        if alarm_email:
            # SNS e-mails a confirmation link first; nothing is delivered until it is followed.
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

    def graph(self, title: str, metrics: Sequence[cloudwatch.IMetric]) -> None:
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title=title, left=list(metrics), width=12, height=6)
        )

    def alarm(
        self,
        id: str,
        series: cloudwatch.IMetric,
        *,
        threshold: float,
        description: str,
        evaluation_periods: int = 3,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            id,
            metric=series,
            threshold=threshold,
            evaluation_periods=evaluation_periods,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        action = cloudwatch_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms.append(alarm)
        self.dashboard.add_widgets(cloudwatch.AlarmWidget(alarm=alarm, width=12, height=6))
        return alarm

    def edge(self, distribution: cloudfront.IDistribution) -> None:
        """CloudFront's requests and error rates, as its viewers see them (stages 5 to 7).

        The metrics live in us-east-1 whatever the stack's region: the dashboard graphs them
        from there, but CloudWatch alarms only on metrics of their own region, so the 5xx
        alarm exists only when the stack is in us-east-1.
        """
        where = {
            "dimensions_map": {"DistributionId": distribution.distribution_id, "Region": "Global"},
            "region": CLOUDFRONT_METRICS_REGION,
            "period": PERIOD,
        }
        requests = cloudwatch.Metric(
            namespace="AWS/CloudFront", metric_name="Requests", statistic="Sum", **where
        )
        rates = {
            name: cloudwatch.Metric(
                namespace="AWS/CloudFront", metric_name=name, statistic="Average", **where
            )
            for name in ("4xxErrorRate", "5xxErrorRate", "TotalErrorRate")
        }
        self.graph("CloudFront requests / min", [requests])
        self.graph("CloudFront error rate %", list(rates.values()))
        region = Stack.of(self).region
        if not Token.is_unresolved(region) and region == CLOUDFRONT_METRICS_REGION:
            self.alarm(
                "EdgeServerErrors",
                rates["5xxErrorRate"],
                threshold=1,
                description="1 % or more of CloudFront's answers are 5xx (its own, or the "
                "origin's, or no answer from the origin in time).",
            )
