"""Fake AWS credentials for local SQS (moto, LocalStack): declared once.

Used by ``vip-worker dev``, the pytest plugin and the test suites, so nothing run
against a local endpoint can pick up a real account or ask the EC2 metadata
service (169.254.169.254) for one. Imports nothing.
"""

LOCAL_REGION = "us-east-1"
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": LOCAL_REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
