"""Moving up one stage changes exactly what STAGES.md names, and nothing else.

Each step is written as the change in the number of resources of each CloudFormation type between
the stack of stage N and that of stage N+1. A change anywhere else (a resource that appears by
accident, a component that leaks into an earlier stage) fails here with the type that moved.
"""

import pytest

VPC_WITH_A_NAT_GATEWAY = {
    # The first NAT gateway and the private-with-egress ("App") subnets it serves, one per AZ.
    "AWS::EC2::NatGateway": 1,
    "AWS::EC2::Subnet": 2,
    "AWS::EC2::RouteTable": 2,
    "AWS::EC2::SubnetRouteTableAssociation": 2,
    "AWS::EC2::Route": 2,
    # What the instances reach without it: S3 and DynamoDB (gateways), ECR api and docker,
    # CloudWatch Logs, Secrets Manager and SSM (interfaces, sharing one security group).
    "AWS::EC2::VPCEndpoint": 7,
}

EXPECTED = {
    "1 single-box -> 2 separate-db: move the database to its own managed instance": {
        "AWS::RDS::DBInstance": 1,
        "AWS::RDS::DBSubnetGroup": 1,
        "AWS::SecretsManager::SecretTargetAttachment": 1,  # RDS's secret replaces the on-box one
        "AWS::Logs::LogGroup": 1,  # the database's exported log, deleted with the stack
        "AWS::EC2::SecurityGroup": 1,  # the database's, ...
        "AWS::EC2::SecurityGroupIngress": 1,  # ... open to the app's security group only
        "AWS::CloudWatch::Alarm": 1,  # database CPU
    },
    "2 separate-db -> 3 horizontal: a load balancer in front of several instances": {
        "AWS::ElasticLoadBalancingV2::LoadBalancer": 1,
        "AWS::ElasticLoadBalancingV2::Listener": 1,
        "AWS::ElasticLoadBalancingV2::TargetGroup": 1,
        # /metrics answers 404 at the listener (its plain and its percent-encoded spellings);
        # stages 1-2 do that in the box's reverse proxy, which is no resource of its own.
        "AWS::ElasticLoadBalancingV2::ListenerRule": 2,
        "AWS::EC2::SecurityGroup": 2,  # the load balancer's, the VPC endpoints'
        "AWS::EC2::SecurityGroupIngress": 1,  # app port from the load balancer only
        "AWS::EC2::SecurityGroupEgress": 1,  # load balancer to the app port only
        # The box becomes a group of fixed size (2) from the same kind of launch template, whose
        # rolling update replaces one instance at a time.
        "AWS::EC2::Instance": -1,
        "AWS::AutoScaling::AutoScalingGroup": 1,
        "AWS::S3::Bucket": 1,  # access logs ...
        "AWS::S3::BucketPolicy": 1,
        "Custom::S3AutoDeleteObjects": 1,  # ... emptied on destroy
        "AWS::Lambda::Function": 1,  # ... by a function, which logs to a group of the stack
        "AWS::Logs::LogGroup": 1,
        "AWS::IAM::Role": 1,
        "AWS::CloudWatch::Alarm": 3,  # latency p95, the app's 5xx, the load balancer's 5xx
        **VPC_WITH_A_NAT_GATEWAY,
    },
    "3 horizontal -> 4 read-replicas: read replicas": {
        "AWS::RDS::DBInstance": 2,
        "AWS::RDS::DBSubnetGroup": 2,
        "AWS::CloudWatch::Alarm": 1,  # replica lag
    },
    "4 read-replicas -> 5 cache-cdn: cache inside (Redis) and outside (CDN), carts in DynamoDB": {
        "AWS::ElastiCache::ReplicationGroup": 1,
        "AWS::ElastiCache::SubnetGroup": 1,
        "AWS::SecretsManager::Secret": 1,  # the Redis AUTH token
        "AWS::EC2::SecurityGroup": 1,
        "AWS::EC2::SecurityGroupIngress": 2,  # app to the cache; CloudFront to the load balancer
        "AWS::CloudFront::Distribution": 1,
        "AWS::CloudFront::VpcOrigin": 1,  # the load balancer turns internal, reached through it
        "Custom::AWS": 1,  # ... and a look-up of the VPC origin's security group, by a function
        "AWS::Lambda::Function": 1,
        "AWS::IAM::Role": 1,
        "AWS::IAM::Policy": 1,
        "AWS::Logs::LogGroup": 1,
        "AWS::CloudFront::CachePolicy": 1,
        "AWS::CloudFront::OriginAccessControl": 1,
        "AWS::S3::Bucket": 1,
        "AWS::S3::BucketPolicy": 1,
        "Custom::S3AutoDeleteObjects": 1,
        "AWS::DynamoDB::Table": 1,
        "AWS::CloudWatch::Alarm": 2,  # cache engine CPU, CloudFront 5xx (us-east-1 only)
    },
    "5 cache-cdn -> 6 auto-scaling: let the fleet follow demand": {
        # The fixed group becomes blue and green, each from its launch template (with its
        # instance profile).
        "AWS::AutoScaling::AutoScalingGroup": 1,
        "AWS::EC2::LaunchTemplate": 1,
        "AWS::IAM::InstanceProfile": 1,
        "AWS::AutoScaling::ScalingPolicy": 2,  # target tracking on requests per target
        "AWS::ElasticLoadBalancingV2::TargetGroup": 1,  # one per colour
        # fleet at its maximum; an unhealthy target per colour (a shift's rollback triggers)
        "AWS::CloudWatch::Alarm": 3,
        "AWS::EC2::NatGateway": 1,  # a NAT gateway per AZ
        "AWS::EC2::EIP": 1,
    },
    "6 auto-scaling -> 7 service-oriented: queues and workers": {
        "AWS::SQS::Queue": 2,  # the queue and its dead-letter queue
        "AWS::SQS::QueuePolicy": 2,  # TLS only
        "AWS::SES::EmailIdentity": 1,
        "AWS::AutoScaling::AutoScalingGroup": 1,  # workers ...
        "AWS::AutoScaling::ScalingPolicy": 1,  # ... tracking the backlog per worker
        "AWS::EC2::LaunchTemplate": 1,
        "AWS::IAM::Role": 1,
        "AWS::IAM::Policy": 1,
        "AWS::IAM::InstanceProfile": 1,
        "AWS::Logs::LogGroup": 2,  # the workers' logs, and their agent's embedded metrics
        "AWS::EC2::SecurityGroup": 1,
        "AWS::EC2::SecurityGroupIngress": 2,  # workers to the database and to the cache
        "AWS::CloudWatch::Alarm": 2,  # oldest message age, dead letters
    },
    "7 service-oriented -> 8 federated: databases per function, orders sharded by customer": {
        # Accounting, delivery and two order shards: each a primary in its own subnet group,
        # with its own secret, its exported log's group, and its own security group ...
        # ... and each shard one read replica (in a subnet group of its own, as main's are;
        # accounting and delivery have none: the app reads them from their primaries).
        "AWS::RDS::DBInstance": 4 + 2,
        "AWS::RDS::DBSubnetGroup": 4 + 2,
        "AWS::SecretsManager::Secret": 4,
        "AWS::SecretsManager::SecretTargetAttachment": 4,
        "AWS::Logs::LogGroup": 4,
        "AWS::EC2::SecurityGroup": 4,  # a shard's replica shares its primary's ...
        "AWS::EC2::SecurityGroupIngress": 8,  # ... open to the web and the worker tiers only
        "AWS::CloudWatch::Alarm": 4 + 2,  # each new primary's CPU; each shard's replica lag
    },
}


@pytest.mark.parametrize("step", list(EXPECTED), ids=lambda step: step.split(":")[0])
def test_the_step_to_the_next_stage_changes_exactly_what_the_ladder_names(synthesized, step):
    number = int(step.split()[0])
    before = synthesized[number].type_counts()
    after = synthesized[number + 1].type_counts()
    changed = {
        kind: after[kind] - before[kind]
        for kind in sorted(set(before) | set(after))
        if after[kind] != before[kind]
    }
    assert changed == EXPECTED[step]
