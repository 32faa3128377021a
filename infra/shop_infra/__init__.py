"""The shop's AWS CDK app: one stack per stage of the ladder, composed from the stage catalog."""
