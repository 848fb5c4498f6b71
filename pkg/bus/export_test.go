package bus

// SilenceForTest stops f's current consumer without telling its watchdog,
// as a consumer that went silent under a killed node.
func SilenceForTest(f *Follower) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cc != nil {
		f.cc.Stop()
	}
}
