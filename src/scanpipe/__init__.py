"""scanpipe: batch inference for 3D medical scans, scaled from zero on queue depth.

The pipeline, in the order a scan travels through it::

    storage  -> events -> queue -> autoscale -> worker -> imaging -> models
    (bucket)    (S3 JSON)  (SQS)   (KEDA)       (loop)    (NIfTI)    (segment)

with ``ledger`` recording every scan and worker lifetime, and ``cli`` on top.
"""

__version__ = "0.1.0"
