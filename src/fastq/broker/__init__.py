"""The Redis broker: queues, in-flight records, delayed set and dead letters.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from .base import Broker
from .keys import CONSUMER_GROUP, Keys, QueueKeys, validate_queue_name
from .redis import RedisBroker, safe_url

__all__ = ["CONSUMER_GROUP", "Broker", "Keys", "QueueKeys", "RedisBroker", "safe_url", "validate_queue_name"]
