"""One CloudWatch dashboard per stage, and alarms on the figures that reveal its bottleneck."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

PERIOD = Duration.minutes(1)


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
    def __init__(self, scope: Construct, id: str, *, title: str) -> None:
        super().__init__(scope, id)
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.hours(3),
            widgets=[[cloudwatch.TextWidget(markdown=f"# {title}", width=24, height=1)]],
        )
        self.alarms: list[cloudwatch.Alarm] = []

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
        self.alarms.append(alarm)
        self.dashboard.add_widgets(cloudwatch.AlarmWidget(alarm=alarm, width=12, height=6))
        return alarm
