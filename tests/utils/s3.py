"""A real S3 API on a free loopback port (moto's server, in a thread), with IAM authentication
enforced: requests must be signed with the credentials the fixture puts in the environment,
whose secret (40 random characters) tests look for wherever it must never appear."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest

from cli.localstack import free_port

BUCKET = "nst-test"
REGION = "us-east-1"
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret: str

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret,
        )


@pytest.fixture(scope="session")
def s3_server():
    """The server, a bucket and a signed-in IAM user; the environment (inherited by every
    process a test starts) points botocore at it with that user's credentials."""
    import boto3
    import httpx
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in failures
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        setup = {"endpoint_url": endpoint, "region_name": REGION}
        setup |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="nst")
        iam.put_user_policy(UserName="nst", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
        key = iam.create_access_key(UserName="nst")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        # From here on every request is authenticated and authorised (moto's IAM checks).
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        s3 = S3Server(endpoint, BUCKET, key["AccessKeyId"], key["SecretAccessKey"])
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AWS_ENDPOINT_URL", endpoint)
            patch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            patch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
            patch.setenv("AWS_DEFAULT_REGION", REGION)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE"):
                patch.delenv(name, raising=False)
            yield s3
    finally:
        server.stop()
