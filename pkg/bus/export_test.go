package bus

// SilenceForTest stops f's current consumer without telling its watchdog.
func SilenceForTest(f *Follower) { f.silenceForTest() }
