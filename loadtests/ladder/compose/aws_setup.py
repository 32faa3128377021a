"""The stage ladder's AWS side in compose (moto): the carts table (stage 5+) and the order
queue with its dead-letter queue (stage 7), as the stacks make them. Idempotent."""

import json
import os

import boto3

endpoint = os.environ.get("SHOP_AWS_ENDPOINT_URL")
kw = {"region_name": os.environ.get("SHOP_AWS_REGION", "us-east-1"), "endpoint_url": endpoint}
if os.environ.get("SHOP_CARTS_TABLE"):
    dynamodb = boto3.client("dynamodb", **kw)
    table = os.environ["SHOP_CARTS_TABLE"]
    if table not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "cart_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "cart_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )
if os.environ.get("SHOP_QUEUE_URL"):
    sqs = boto3.client("sqs", **kw)
    dead = sqs.create_queue(QueueName="shop-orders-dead")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "5"}
    sqs.create_queue(
        QueueName="shop-orders",
        Attributes={"VisibilityTimeout": "60", "RedrivePolicy": json.dumps(policy)},
    )
    boto3.client("ses", **kw).verify_email_identity(EmailAddress=os.environ["SHOP_MAIL_SENDER"])
