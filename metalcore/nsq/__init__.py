"""The nsq_consumer stage's work: machine events from metal-api's NSQ topic turned into ipmi jobs
(consumer.py); the event schemas and plans are pure, in metalcore/protocol/machine_events.py."""
