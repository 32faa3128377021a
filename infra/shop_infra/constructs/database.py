"""RDS PostgreSQL 17: the primary (Multi-AZ when the catalog says so) and its read replicas."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from constructs import Construct

from ..nag import acknowledge
from ..stages import Database as DatabaseSpec

ENGINE_VERSION = rds.PostgresEngineVersion.VER_17
"""The major version only ("17"): RDS creates the instance at a recent minor of 17 and moves it
forward in the maintenance window (auto minor version upgrade), whereas a pinned minor fails
the next deploy once RDS has retired it. Replicas take their primary's version."""
PORT = 5432
DATABASE_NAME = "shop"
"""The database the app's schema lives in: created by RDS, and named in the secret (`dbname`)."""
USERNAME = "shop"
EXPORTED_LOGS = ("postgresql",)
"""The primary's logs RDS exports to CloudWatch Logs (replicas export none)."""


class Database(Construct):
    """The primary and its replicas share one security group, open only to the given peers.

    Credentials live in a generated Secrets Manager secret in the RDS JSON format. RDS's own
    generated secret holds only username and password (the attachment adds host, port, engine
    and instance id): `dbname` is there only because the secret's template puts it there, and
    the app refuses a secret without it rather than fall back to the `postgres` database.
    Performance Insights is on for every instance (7 days, the free tier), so that a load test
    shows which statements the database spends its time on.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: DatabaseSpec,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        function: str | None = None,
        first_zone: int = 0,
    ) -> None:
        """`function` names a database beside the main one (stage 8: accounting, delivery, an
        order shard) in its instance identifier; the main database has none. Replica `i` goes
        to availability zone `first_zone + i` (modulo the zones): order shard `n` starts at
        zone `n - 1`, so that shards with one replica each do not all read from one zone."""
        super().__init__(scope, id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="PostgreSQL: reachable from the app and worker tiers only",
            allow_all_outbound=False,
        )
        instance_type = ec2.InstanceType(spec.instance_type)
        credentials = rds.DatabaseSecret(self, "Secret", username=USERNAME, dbname=DATABASE_NAME)
        # RDS exports logs to /aws/rds/instance/<identifier>/<log>, making that group itself if
        # it is missing, and nothing would delete it. So the identifier is chosen here (from the
        # stack's name, unique per account and region) and the groups are the stack's, made
        # before the instance and deleted after it. The price of a chosen name: a change that
        # replaces the primary fails; a demo stage is destroyed and deployed again instead.
        stack_name = Stack.of(self).stack_name
        assert not Token.is_unresolved(stack_name), "the identifier needs the stack's name"
        name = f"{stack_name}-{function}" if function else stack_name
        identifier = f"{name}-primary".lower()
        log_groups = [
            logs.LogGroup(
                self,
                f"{log.title()}Logs",
                log_group_name=f"/aws/rds/instance/{identifier}/{log}",
                retention=logs.RetentionDays.TWO_WEEKS,
                removal_policy=RemovalPolicy.DESTROY,
            )
            for log in EXPORTED_LOGS
        ]
        self.primary = rds.DatabaseInstance(
            self,
            "Primary",
            instance_identifier=identifier,
            engine=rds.DatabaseInstanceEngine.postgres(version=ENGINE_VERSION),
            instance_type=instance_type,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            port=PORT,
            credentials=rds.Credentials.from_secret(credentials),
            database_name=DATABASE_NAME,
            multi_az=spec.multi_az,
            allocated_storage=spec.storage_gib,
            storage_type=rds.StorageType.GP3,
            storage_encrypted=True,
            backup_retention=Duration.days(spec.backup_retention_days),
            delete_automated_backups=True,
            # A demo stack is torn down after its load test: no final snapshot, no protection.
            deletion_protection=False,
            removal_policy=RemovalPolicy.DESTROY,
            cloudwatch_logs_exports=list(EXPORTED_LOGS),
            auto_minor_version_upgrade=True,
            enable_performance_insights=True,
            performance_insight_retention=rds.PerformanceInsightRetention.DEFAULT,
        )
        self.primary.node.add_dependency(*log_groups)
        # The secret as attached to the instance: its readers wait for host and port to be in it.
        assert self.primary.secret is not None
        self.secret = self.primary.secret
        self.replicas = [
            rds.DatabaseInstanceReadReplica(
                self,
                f"Replica{index + 1}",
                source_database_instance=self.primary,
                instance_type=instance_type,
                vpc=vpc,
                vpc_subnets=subnets,
                security_groups=[self.security_group],
                # Encryption is inherited from the (encrypted) primary; RDS rejects the property.
                # Spread the replicas over the AZs, so that one AZ's loss keeps some readers.
                availability_zone=vpc.availability_zones[
                    (first_zone + index) % len(vpc.availability_zones)
                ],
                deletion_protection=False,
                removal_policy=RemovalPolicy.DESTROY,
                auto_minor_version_upgrade=True,
                enable_performance_insights=True,
                performance_insight_retention=rds.PerformanceInsightRetention.DEFAULT,
            )
            for index in range(spec.read_replicas)
        ]
        for instance in [self.primary, *self.replicas]:
            self._acknowledge(instance)
        if not spec.multi_az:
            acknowledge(
                self.primary,
                id="AwsSolutions-RDS3",
                reason="Stage 2 is a single-AZ database by definition (STAGES.md): its lack of "
                "redundancy is part of what the stage demonstrates; Multi-AZ is stage 3.",
            )
        for replica in self.replicas:
            acknowledge(
                replica,
                id="AwsSolutions-RDS2",
                reason="A replica inherits its storage encryption from the primary, which is "
                "encrypted (StorageEncrypted: true); CloudFormation rejects the property on a "
                "replica (cfn-lint F3020).",
            )
            if len(self.replicas) > 1:
                acknowledge(
                    replica,
                    id="AwsSolutions-RDS3",
                    reason="Read capacity is made redundant by several replicas spread over both "
                    "AZs (and the Multi-AZ primary takes reads if all fail); a standby per "
                    "replica would double the cost of reads for no gain in this demo.",
                )
            else:
                acknowledge(
                    replica,
                    id="AwsSolutions-RDS3",
                    reason="The one replica's reads fall back to the Multi-AZ primary while the "
                    "replica lags or is down (the app skips an unhealthy replica), and RDS "
                    "replaces a lost one; a standby for it would double the cost of reads for "
                    "no gain in this demo.",
                )
        acknowledge(
            credentials,
            id="AwsSolutions-SMG4",
            reason="A stage stack lives for one load-test session (hours) and is then destroyed: "
            "a rotation schedule (30 days at most) would never fire, and rotation needs a "
            "Lambda inside the VPC.",
        )

    def allow_from(self, peer: ec2.IConnectable) -> None:
        self.security_group.connections.allow_from(peer, ec2.Port.tcp(PORT), "PostgreSQL")

    @property
    def replica_hosts(self) -> list[str]:
        """Each replica's host name (a token), in replica order."""
        return [replica.db_instance_endpoint_address for replica in self.replicas]

    @property
    def replica_endpoints(self) -> list[str]:
        """Each replica's `host:port` (a token), in replica order.

        A reference to the replica's endpoint: whatever carries it (a boot script) is created
        only once the replica exists.
        """
        return [replica.instance_endpoint.socket_address for replica in self.replicas]

    @staticmethod
    def _acknowledge(instance: rds.DatabaseInstanceBase) -> None:
        acknowledge(
            instance,
            id="AwsSolutions-RDS10",
            reason="Deletion protection is off on purpose: every stage is a demo stack destroyed "
            "after its load test (README, 'Destroy'); the data is generated seed data.",
        )
        acknowledge(
            instance,
            id="AwsSolutions-RDS11",
            reason="The default PostgreSQL port is kept: the security group admits only the app "
            "and worker security groups, so a non-standard port would add no protection.",
        )
