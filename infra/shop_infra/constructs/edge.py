"""Load off the web tier (stage 5): S3 + CloudFront for static files and cacheable pages,
and the carts table in DynamoDB.

CloudFront reaches the (internal) load balancer through a VPC origin, and the load balancer's
security group admits that origin's interfaces only: the CDN is the one way in, and no request
or token crosses the internet between CloudFront and the origin.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from constructs import Construct

from ..nag import acknowledge

STATIC_PATH = "/static/*"
PAGE_COOKIES = ("shop_session", "shop_cart")
"""The storefront's cookies that change what a page shows (app/storefront/sessions.py)."""
VPC_ORIGINS_SECURITY_GROUP = "CloudFront-VPCOrigins-Service-SG"
"""The security group CloudFront gives the network interfaces of its VPC origins in a VPC."""


class Edge(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        load_balancer: elbv2.ApplicationLoadBalancer,
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
        # Authorization and the storefront's session and cart cookies are part of the key, so a
        # signed-in answer is never served to another, and a visitor with a session or a cart
        # never gets the anonymous copy of a page (the app answers them `private`).
        pages = cloudfront.CachePolicy(
            self,
            "Pages",
            comment="Shop pages: the origin's Cache-Control decides",
            default_ttl=Duration.seconds(0),
            min_ttl=Duration.seconds(0),
            max_ttl=Duration.days(1),
            header_behavior=cloudfront.CacheHeaderBehavior.allow_list("Authorization"),
            query_string_behavior=cloudfront.CacheQueryStringBehavior.all(),
            cookie_behavior=cloudfront.CacheCookieBehavior.allow_list(*PAGE_COOKIES),
            enable_accept_encoding_gzip=True,
            enable_accept_encoding_brotli=True,
        )
        # The load balancer is internal: CloudFront reaches it through a VPC origin, network
        # interfaces CloudFront places in the load balancer's subnets, over AWS's network.
        self.load_balancer_origin = cloudfront.VpcOrigin(
            self,
            "LoadBalancerOrigin",
            endpoint=cloudfront.VpcOriginEndpoint.application_load_balancer(load_balancer),
            http_port=80,
            protocol_policy=cloudfront.OriginProtocolPolicy.HTTP_ONLY,
        )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="Shop: static files from S3, cacheable pages from the load balancer",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.VpcOrigin.with_vpc_origin(
                    self.load_balancer_origin,
                    domain_name=load_balancer.load_balancer_dns_name,
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
        self._admit_only_the_vpc_origin(vpc, load_balancer)
        acknowledge(
            distribution,
            id="AwsSolutions-CFR1",
            reason="A shop open to customers in every country: a geo restriction would only "
            "turn some of them away.",
        )
        acknowledge(
            distribution,
            id="AwsSolutions-CFR2",
            reason="No WAF web ACL on a disposable load-test stage: WAF bills every request it "
            "inspects (about 0.60 USD a million), which a load test multiplies, and a CloudFront "
            "web ACL must be made in us-east-1 while a stage without a domain may deploy "
            "elsewhere. A shop with real customers should attach AWS managed rule groups here.",
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

    def _admit_only_the_vpc_origin(
        self, vpc: ec2.IVpc, load_balancer: elbv2.ApplicationLoadBalancer
    ) -> None:
        """Open the load balancer to CloudFront's VPC origin interfaces, and to nothing else.

        CloudFront makes their security group only once a distribution uses the VPC origin,
        and CloudFormation does not return its id: a custom resource looks it up by name once
        the distribution is deployed (the pattern the aws-cdk-lib documentation gives for VPC
        origins). A look-up that waited for the origin alone could run before the group exists,
        find nothing, and roll the stack back.
        """
        describe = cr.AwsSdkCall(
            service="ec2",
            action="describeSecurityGroups",
            parameters={
                "Filters": [
                    {"Name": "vpc-id", "Values": [vpc.vpc_id]},
                    {"Name": "group-name", "Values": [VPC_ORIGINS_SECURITY_GROUP]},
                ]
            },
            physical_resource_id=cr.PhysicalResourceId.of(VPC_ORIGINS_SECURITY_GROUP),
            output_paths=["SecurityGroups.0.GroupId"],
        )
        lookup = cr.AwsCustomResource(
            self,
            "VpcOriginSecurityGroup",
            on_create=describe,
            on_update=describe,
            policy=cr.AwsCustomResourcePolicy.from_sdk_calls(
                resources=cr.AwsCustomResourcePolicy.ANY_RESOURCE
            ),
            install_latest_aws_sdk=False,
            log_group=logs.LogGroup(
                self,
                "VpcOriginSecurityGroupLogs",
                retention=logs.RetentionDays.ONE_WEEK,
                removal_policy=RemovalPolicy.DESTROY,
            ),
        )
        lookup.node.add_dependency(self.load_balancer_origin, self.distribution)
        acknowledge(
            lookup,
            id="AwsSolutions-IAM5[Resource::*]",
            reason="ec2:DescribeSecurityGroups has no resource-level permissions: it is "
            "granted on '*' or not at all; the call is read-only and filtered to this VPC.",
        )
        provider = Stack.of(self).node.try_find_child(
            "AWS" + cr.AwsCustomResource.PROVIDER_FUNCTION_UUID.replace("-", "")
        )
        assert provider is not None
        acknowledge(
            provider,
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            reason="aws-cdk-lib's custom resource function (the VPC origin's security group "
            "look-up) writes its own logs with the AWS-maintained minimal logging policy.",
        )
        origin_interfaces = ec2.SecurityGroup.from_security_group_id(
            self,
            "VpcOriginInterfaces",
            lookup.get_response_field("SecurityGroups.0.GroupId"),
            mutable=False,
        )
        load_balancer.connections.allow_from(
            origin_interfaces, ec2.Port.tcp(80), "HTTP from the CloudFront VPC origin only"
        )

    @property
    def url(self) -> str:
        return f"https://{self.distribution.distribution_domain_name}"
