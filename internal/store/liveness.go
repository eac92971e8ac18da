package store

import (
	"time"
)

// HeartbeatFlushEvery is how often the control plane writes the heartbeats
// kept in memory to the database, all in one transaction (FlushHeartbeats):
// a third of its default node timeout, so the stored heartbeat_at that
// other processes read is never much older than this while it runs.
const HeartbeatFlushEvery = 5 * time.Second
