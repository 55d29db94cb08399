"""Generated from proto/faas/v1/api.proto by scripts/gen_proto.py; do not edit."""
