"""The cloud form's AWS plumbing, shared by the S3 store and the SQS queue.

:mod:`scanpipe.cloud.clients` makes boto3 clients (credentials, region,
endpoint, retries) and translates their errors into :mod:`scanpipe.errors`;
:mod:`scanpipe.cloud.bootstrap` creates the buckets, queues and notification
of a development stack. Nothing here is imported by the embedded form, so it
never pays for boto3.
"""

#: Seconds a received message stays hidden; workers extend it while working.
DEFAULT_VISIBILITY_TIMEOUT = 60
#: Receives after which SQS moves a message to the dead-letter queue.
DEFAULT_MAX_RECEIVE_COUNT = 3
