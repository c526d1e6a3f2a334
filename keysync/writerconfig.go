package keysync

// WriterConfig is how a writer is configured from flags or the
// environment, as text: [WriterConfig.Options] turns it into
// [WriterOptions].
type WriterConfig struct {
	// Root lists the pinned root keys, ssvk1…, comma- or space-separated
	// (the form of $SHAPESEAL_ROOT). Required.
	Root string
	// Floor is the floor file; "" keeps the floor in memory, for this run
	// only.
	Floor string
	// KEK is the only KEK URI to use (local:///…, or hcvault://… with
	// keysync/vaultkek imported); "" opens the KEK each tenant's log names.
	KEK string
}

// Options parses the roots, opens the floor and the KEK, and returns the
// options of a [Writer].
func (c WriterConfig) Options() (WriterOptions, error) {
	roots, err := ParseVerifyKeys(c.Root)
	if err != nil {
		return WriterOptions{}, err
	}
	wo := WriterOptions{Roots: roots, Floor: NewMemoryFloor()}
	if c.Floor != "" {
		if wo.Floor, err = OpenFileFloor(c.Floor); err != nil {
			return WriterOptions{}, err
		}
	}
	if c.KEK != "" {
		kek, err := OpenKEK(c.KEK)
		if err != nil {
			return WriterOptions{}, err
		}
		wo.KEKs = UseKEK(kek)
	}
	return wo, nil
}
