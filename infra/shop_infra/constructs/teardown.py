"""What `cdk destroy` must not leave behind: log groups Lambda would make on its own, and a
bucket that a late access log keeps from being deleted."""

from __future__ import annotations

from aws_cdk import CfnResource, RemovalPolicy, Stack
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

FUNCTION_LOG_RETENTION = logs.RetentionDays.ONE_WEEK


def leave_nothing_behind(stack: Stack) -> None:
    """Make everything of `stack` go with it; call once all its constructs are made.

    - Every Lambda function, aws-cdk-lib's helpers included (the one that empties the VPC's
      default security group, the one that empties buckets on destroy), logs to a group the
      stack owns and deletes. Left alone, Lambda makes /aws/lambda/<function> at the first
      invocation, and nothing ever deletes it. The function refers to its group, so the group
      is made before it and deleted after it: the helper that empties a bucket during the
      stack's deletion still has its group to log to.
    - Every bucket keeps its policy until the bucket itself is deleted (which deletes the policy
      with it). The helper that empties a bucket first adds a deny of every s3:PutObject to
      that policy; deleting the policy before the bucket would let an access log delivered late
      land in the emptied bucket and fail its deletion.
    """
    parent: Construct | None = None
    for node in stack.node.find_all():
        if isinstance(node, s3.Bucket) and node.policy is not None:
            node.policy.apply_removal_policy(RemovalPolicy.RETAIN)
        if not isinstance(node, CfnResource) or node.cfn_resource_type != "AWS::Lambda::Function":
            continue
        if _has_log_group(stack, node):
            continue
        parent = parent or Construct(stack, "FunctionLogs")
        group = logs.LogGroup(
            parent,
            str(stack.resolve(stack.get_logical_id(node))),
            retention=FUNCTION_LOG_RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        node.add_property_override("LoggingConfig.LogGroup", group.log_group_name)


def _has_log_group(stack: Stack, function: CfnResource) -> bool:
    """Whether the function's construct already gave it a log group (LoggingConfig.LogGroup)."""
    config = getattr(function, "logging_config", None)  # an L1 CfnFunction's property
    if config is None:
        return False
    resolved = stack.resolve(config)
    return isinstance(resolved, dict) and bool(resolved.get("logGroup") or resolved.get("LogGroup"))
