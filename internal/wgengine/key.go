package wgengine

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// DefaultKeyFile is where flannel's wireguard backend keeps the host's
// private key; KeyFileEnv overrides it, for flannel and weft alike.
const (
	DefaultKeyFile = "/run/flannel/wgkey"
	KeyFileEnv     = "WIREGUARD_KEY_FILE"
)

// Key is a Curve25519 key (private, public or pre-shared): 32 bytes, written
// in base64 in leases, configs and the key file, in hex on the UAPI socket.
type Key [32]byte

// ParseKey decodes the standard base64 of 32 bytes, as `wg genkey` and
// flannel write it.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("key %.60q: not base64: %w", s, err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("key %.60q: %d bytes, must be 32", s, len(b))
	}
	copy(k[:], b)
	return k, nil
}

func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros (no key: no PSK, an unset field).
func (k Key) IsZero() bool { return k == Key{} }

func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// GenerateKey returns a new private key, clamped as `wg genkey` clamps it.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate private key: %w", err)
	}
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k, nil
}

// PublicKey is the public key of the private key k.
func (k Key) PublicKey() Key {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil { // only for a wrong length, which a Key cannot have
		panic(err)
	}
	var pub Key
	copy(pub[:], priv.PublicKey().Bytes())
	return pub
}

// KeyFile is the key file flannel's backend uses: $WIREGUARD_KEY_FILE when
// set, else DefaultKeyFile.
func KeyFile() string {
	if p, ok := os.LookupEnv(KeyFileEnv); ok && p != "" {
		return p
	}
	return DefaultKeyFile
}

// LoadOrCreateKey reads the private key at path, or creates it (mode 0600,
// its directory 0755) when the file does not exist, so that a host keeps
// its identity — and its peers need no new key — across restarts. The file
// holds the key in base64 as flannel writes it (no newline); surrounding
// whitespace, as `wg genkey > file` leaves, is accepted.
func LoadOrCreateKey(path string, log *slog.Logger) (Key, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, perr := ParseKey(strings.TrimSpace(string(data)))
		if perr != nil {
			return Key{}, fmt.Errorf("wgengine: private key file %s: %w", path, perr)
		}
		if k.IsZero() {
			return Key{}, fmt.Errorf("wgengine: private key file %s: all zeros, not a key", path)
		}
		if st, serr := os.Stat(path); serr == nil && st.Mode().Perm()&0o077 != 0 && log != nil {
			log.Warn("private key file is readable by group or others", "file", path, "mode", st.Mode().Perm())
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("wgengine: read private key file: %w", err)
	}
	k, err := GenerateKey()
	if err != nil {
		return Key{}, fmt.Errorf("wgengine: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return Key{}, fmt.Errorf("wgengine: create directory of private key file: %w", err)
	}
	// O_EXCL: two daemons starting at once must not each write a key and
	// publish the one the other overwrote.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKey(path, log)
	}
	if err != nil {
		return Key{}, fmt.Errorf("wgengine: create private key file: %w", err)
	}
	_, werr := f.WriteString(k.String())
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return Key{}, fmt.Errorf("wgengine: write private key file %s: %w", path, err)
	}
	if log != nil {
		log.Info("created WireGuard private key", "file", path, "public_key", k.PublicKey().String())
	}
	return k, nil
}
