"""SQS's own limits, declared once (SQS Developer Guide, "Amazon SQS message quotas").

Imports nothing: ``vip_worker.config`` validates settings against these without
loading boto3.
"""

BATCH_MAX = 10  # entries per batch call, messages per ReceiveMessage
MAX_VISIBILITY_S = 43200  # 12 h: the longest a message stays invisible, from its receive
MAX_WAIT_S = 20  # the longest long poll (WaitTimeSeconds)
MAX_DELAY_S = 900  # the longest DelaySeconds of a send
# The size limit: the body plus every attribute's name, data type and value, in bytes.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_ATTRIBUTES = 10  # message attributes per message
