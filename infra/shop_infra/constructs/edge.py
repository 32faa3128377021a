"""Load off the web tier (stage 5): S3 + CloudFront for static files and cacheable pages,
and the carts table in DynamoDB."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ..nag import acknowledge

STATIC_PATH = "/static/*"


class Edge(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        load_balancer: elbv2.IApplicationLoadBalancer,
        logs_bucket: s3.IBucket,
        domain_name: str | None = None,
        certificate: acm.ICertificate | None = None,
    ) -> None:
        super().__init__(scope, id)
        self.assets = s3.Bucket(
            self,
            "Assets",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=logs_bucket,
            server_access_logs_prefix="s3-assets/",
            removal_policy=RemovalPolicy.DESTROY,
            auto_delete_objects=True,
        )
        # Pages: the origin's Cache-Control decides (0 s unless the app marks a page cacheable);
        # Authorization is part of the key, so a signed-in answer is never served to another.
        pages = cloudfront.CachePolicy(
            self,
            "Pages",
            comment="Shop pages: the origin's Cache-Control decides",
            default_ttl=Duration.seconds(0),
            min_ttl=Duration.seconds(0),
            max_ttl=Duration.days(1),
            header_behavior=cloudfront.CacheHeaderBehavior.allow_list("Authorization"),
            query_string_behavior=cloudfront.CacheQueryStringBehavior.all(),
            cookie_behavior=cloudfront.CacheCookieBehavior.none(),
            enable_accept_encoding_gzip=True,
            enable_accept_encoding_brotli=True,
        )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="Shop: static files from S3, cacheable pages from the load balancer",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.LoadBalancerV2Origin(
                    load_balancer,
                    protocol_policy=cloudfront.OriginProtocolPolicy.HTTP_ONLY,
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=pages,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            ),
            additional_behaviors={
                STATIC_PATH: cloudfront.BehaviorOptions(
                    origin=origins.S3BucketOrigin.with_origin_access_control(self.assets),
                    viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                    cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                )
            },
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            enable_logging=True,
            log_bucket=logs_bucket,
            log_file_prefix="cloudfront/",
            minimum_protocol_version=(
                cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021 if certificate else None
            ),
            domain_names=[domain_name] if domain_name else None,
            certificate=certificate,
        )
        distribution = self.distribution
        acknowledge(
            distribution,
            id="AwsSolutions-CFR1",
            reason="A shop open to customers in every country: a geo restriction would only "
            "turn some of them away.",
        )
        acknowledge(
            distribution,
            id="AwsSolutions-CFR2",
            reason="No WAF web ACL in the demo stages: it costs per rule and per request, and "
            "its rate limits would cap the very load test the stage exists for.",
        )
        acknowledge(
            distribution,
            id="AwsSolutions-CFR5",
            reason="The load balancer origin speaks plain HTTP because it has no certificate "
            "without a domain; viewers always get HTTPS (redirect), only the hop inside AWS is "
            "HTTP.",
        )
        if certificate is None:
            acknowledge(
                distribution,
                id="AwsSolutions-CFR4",
                reason="Without a domain the distribution uses the default *.cloudfront.net "
                "certificate, whose TLS floor CloudFront fixes; with a hosted zone (context "
                "shop:hosted_zone) an ACM certificate and TLSv1.2_2021 are used.",
            )

        self.carts = dynamodb.Table(
            self,
            "Carts",
            partition_key=dynamodb.Attribute(name="cart_id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expires_at",
            removal_policy=RemovalPolicy.DESTROY,
        )

    @property
    def url(self) -> str:
        return f"https://{self.distribution.distribution_domain_name}"
