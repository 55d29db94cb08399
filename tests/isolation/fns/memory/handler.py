"""Allocates (and touches) memory until something stops it."""

def handler(event, context):
    hoard = []
    step = 16 << 20
    for _ in range(int(event.get("max_mb", 4096)) // 16):
        hoard.append(b"m" * step)
    return {"allocated_mb": len(hoard) * 16}
