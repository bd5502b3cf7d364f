"""vip_worker.sqs.sigv4 signs exactly as botocore's SigV4Auth does."""

from __future__ import annotations

import calendar
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from vip_worker.sqs.sigv4 import Credentials, Signer

HEADERS = {"content-type": "application/x-amz-json-1.0",
           "x-amz-target": "AmazonSQS.ReceiveMessage", "x-amzn-query-mode": "true"}


def botocore_signature(host, region, body, token):
    request = AWSRequest(method="POST", url=f"https://{host}/", data=body, headers=dict(HEADERS))
    SigV4Auth(BotoCredentials("AKIDEXAMPLE", "wJalr/K7MDENG+bPxRfiCY", token), "sqs",
              region).add_auth(request)
    stamp = request.headers["X-Amz-Date"]
    return request.headers["Authorization"], calendar.timegm(time.strptime(stamp,
                                                                           "%Y%m%dT%H%M%SZ"))


@pytest.mark.parametrize("region,host,token,body", [
    ("us-east-1", "sqs.us-east-1.amazonaws.com", None, b'{"QueueUrl":"q"}'),
    ("eu-west-1", "sqs.eu-west-1.amazonaws.com", "FwoGZXIvYXdzEJr//token==", b"{}"),
    ("cn-north-1", "sqs.cn-north-1.amazonaws.com.cn", None, '{"B":"\u00e9 \u2603"}'.encode()),
    ("us-east-1", "127.0.0.1:4566", "t", b'{"Entries":[{"Id":"0"}]}'),
])
def test_signature_is_botocores(region, host, token, body):
    expected, now = botocore_signature(host, region, body, token)
    headers = Signer(region).sign({"host": host, **HEADERS}, body,
                                  Credentials("AKIDEXAMPLE", "wJalr/K7MDENG+bPxRfiCY", token), now)
    assert headers["authorization"] == expected
    assert ("x-amz-security-token" in headers) == bool(token)


def test_the_signing_key_follows_the_day_and_the_secret():
    signer = Signer("us-east-1")
    first = signer.signing_key("secret", "20261128")
    assert signer.signing_key("secret", "20261128") is first  # cached
    assert signer.signing_key("secret", "20261129") != first
    assert signer.signing_key("rotated", "20261129") != signer.signing_key("secret", "20261129")
