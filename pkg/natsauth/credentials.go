package natsauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// CredentialsFile is the name of the file `lungseg run` writes in its
// data folder with the passwords of the run's NATS users.
const CredentialsFile = "nats-credentials.json"

// ErrCredentialsMode means a credentials file can be read by users other
// than its owner.
var ErrCredentialsMode = errors.New("natsauth: credentials file is readable by group or others (want mode 0600)")

// Credentials are the generated passwords of one embedded server's users,
// one per role (Roles): `lungseg run` makes new ones each time it starts
// its server and writes them to a file only its owner can read, so that
// the command-line tools of the same user can connect with a role.
type Credentials struct {
	// URL is the server's client URL ("" when it has no TCP listener).
	URL string `json:"url,omitempty"`
	// Users maps a role to its password.
	Users map[string]string `json:"users"`
}

// GenerateCredentials returns a fresh random password (192 bits) for
// every role.
func GenerateCredentials() (*Credentials, error) {
	c := &Credentials{Users: map[string]string{}}
	for _, r := range Roles {
		var b [24]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("natsauth: generating a password: %w", err)
		}
		c.Users[r] = base64.RawURLEncoding.EncodeToString(b[:])
	}
	return c, nil
}

// ServerUsers returns the server users of the credentials, each with its
// role's permissions.
func (c *Credentials) ServerUsers() ([]*server.User, error) { return Users(c.Users) }

// Options returns the client options of one role.
func (c *Credentials) Options(role string) (Options, error) {
	pw, ok := c.Users[role]
	if !ok {
		return Options{}, fmt.Errorf("%w %q: not in the credentials", ErrUnknownRole, role)
	}
	return Options{User: role, Password: pw}, nil
}

// WriteCredentials writes c to path with mode 0600 (through a temporary
// file renamed into place, so that a reader never sees half a file).
func WriteCredentials(path string, c *Credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".nats-credentials-*")
	if err != nil {
		return fmt.Errorf("natsauth: writing credentials: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("natsauth: writing credentials: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("natsauth: writing credentials: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("natsauth: writing credentials: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("natsauth: writing credentials: %w", err)
	}
	return nil
}

// ReadCredentials reads a credentials file; one that group or others can
// read is refused (ErrCredentialsMode).
func ReadCredentials(path string) (*Credentials, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("natsauth: credentials: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is %v", ErrCredentialsMode, path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("natsauth: credentials: %w", err)
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("natsauth: credentials %s: %w", path, err)
	}
	return &c, nil
}

// FileOption connects as role with the password read from the
// credentials file at path, read again at every reconnect: a server
// restarted by `lungseg run` has new passwords in the same file.
func FileOption(path, role string) (nats.Option, error) {
	c, err := ReadCredentials(path)
	if err != nil {
		return nil, err
	}
	if _, err := c.Options(role); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return nats.UserInfoHandler(func() (string, string) {
		if c2, err := ReadCredentials(path); err == nil {
			c = c2
		}
		return role, c.Users[role]
	}), nil
}
