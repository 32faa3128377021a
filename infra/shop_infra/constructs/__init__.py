"""Building blocks of the stage stacks: each construct owns one tier and its security group."""
