"""ElastiCache Redis: a Multi-AZ replication group, encrypted in transit and at rest, with AUTH."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from ..nag import acknowledge
from ..stages import Cache as CacheSpec

PORT = 6379


class Cache(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: CacheSpec,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
    ) -> None:
        super().__init__(scope, id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Redis: reachable from the app and worker tiers only",
            allow_all_outbound=False,
        )
        # ElastiCache accepts 16-128 printable characters without @, " or /.
        self.auth_secret = secretsmanager.Secret(
            self,
            "AuthToken",
            description="Redis AUTH token (SHOP_REDIS_AUTH_SECRET_ARN)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
        )
        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "Subnets",
            description="Isolated data subnets",
            subnet_ids=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
        )
        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "ReplicationGroup",
            replication_group_description="Shop cache",
            engine="redis",
            engine_version="7.1",
            cache_node_type=f"cache.{spec.node_type}",
            num_cache_clusters=spec.nodes,
            automatic_failover_enabled=spec.nodes > 1,
            multi_az_enabled=spec.nodes > 1,
            at_rest_encryption_enabled=True,
            transit_encryption_enabled=True,
            # A dynamic reference: CloudFormation resolves it, the template holds no token.
            auth_token=self.auth_secret.secret_value.unsafe_unwrap(),
            port=PORT,
            cache_subnet_group_name=subnet_group.ref,
            security_group_ids=[self.security_group.security_group_id],
        )
        acknowledge(
            self.replication_group,
            id="AwsSolutions-AEC5",
            reason="The default Redis port is kept: the security group admits only the app and "
            "worker security groups, so a non-standard port would add no protection.",
        )

    def allow_from(self, peer: ec2.IConnectable) -> None:
        self.security_group.connections.allow_from(peer, ec2.Port.tcp(PORT), "Redis")

    @property
    def url(self) -> str:
        """rediss:// (TLS) URL of the primary endpoint, without the password."""
        return f"rediss://{self.replication_group.attr_primary_end_point_address}:{PORT}/0"

    @property
    def id_for_metrics(self) -> str:
        return self.replication_group.ref
