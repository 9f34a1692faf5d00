package dockeropts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/weft-net/weft/internal/subnetenv"
)

// writeOut writes the Docker options to path. A regular file, or no file,
// is replaced atomically (temp file and rename), so that Docker never reads
// half a file. Anything else is written in place: renaming onto a symlink
// replaces the link itself with a regular file, and renaming onto a device,
// a FIFO or /dev/stdout (a symlink to /proc/self/fd/1) replaces the device
// node instead of writing to it — `-d /dev/stdout` used to leave a regular
// file where /dev/stdout was. A symlink is the operator's choice of where
// the options go, so we write what it points at and keep the link.
func writeOut(path string, data []byte) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Mode().IsRegular()) {
		return subnetenv.WriteFileAtomic(path, data, 0o644)
	}
	if err != nil {
		return fmt.Errorf("look at %s: %w", path, err)
	}
	// O_TRUNC empties a regular file behind a symlink and is ignored by
	// devices and FIFOs; O_CREATE follows a dangling symlink to its target.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("open %s (%s) to write in place: %w", path, kind(fi.Mode()), err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s (%s) in place: %w", path, kind(fi.Mode()), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s (%s): %w", path, kind(fi.Mode()), err)
	}
	return nil
}

// kind names a file type for errors.
func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "a " + m.Type().String() + " file"
}
