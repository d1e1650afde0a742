package export

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// spool keeps one temporary file per device, so that GPX tracks can be
// written whole after one pass over positions that arrive interleaved by
// device. Memory is bounded by the number of devices (a name each) and
// maxOpen write buffers, never by positions: at most maxOpen files are
// open at once, the least recently written one is closed (flushed) when
// another must open, and reopened for append when needed again.
type spool struct {
	dir   string
	files map[string]*spoolFile
	tick  int64
	open  int
}

type spoolFile struct {
	path string
	f    *os.File
	w    *bufio.Writer
	used int64
}

const (
	spoolMaxOpen = 128
	spoolBuffer  = 8 << 10
)

func newSpool(dir string) *spool {
	return &spool{dir: dir, files: make(map[string]*spoolFile)}
}

// write appends b to the device's file.
func (s *spool) write(device string, b []byte) error {
	sf := s.files[device]
	if sf == nil {
		// Device ids are [A-Za-z0-9_-]: safe file names; an index keeps
		// them short and unique anyway.
		sf = &spoolFile{path: filepath.Join(s.dir, fmt.Sprintf("%06d", len(s.files)))}
		s.files[device] = sf
	}
	if sf.f == nil {
		if s.open >= spoolMaxOpen {
			if err := s.evict(); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(sf.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		sf.f, sf.w = f, bufio.NewWriterSize(f, spoolBuffer)
		s.open++
	}
	s.tick++
	sf.used = s.tick
	_, err := sf.w.Write(b)
	return err
}

// evict closes the least recently written open file.
func (s *spool) evict() error {
	var lru *spoolFile
	for _, sf := range s.files {
		if sf.f != nil && (lru == nil || sf.used < lru.used) {
			lru = sf
		}
	}
	return s.closeFile(lru)
}

func (s *spool) closeFile(sf *spoolFile) error {
	if sf == nil || sf.f == nil {
		return nil
	}
	err := sf.w.Flush()
	if cerr := sf.f.Close(); err == nil {
		err = cerr
	}
	sf.f, sf.w = nil, nil
	s.open--
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// devices returns the devices written, sorted, after closing every file.
func (s *spool) devices() ([]string, error) {
	out := make([]string, 0, len(s.files))
	for dev, sf := range s.files {
		if err := s.closeFile(sf); err != nil {
			return nil, err
		}
		out = append(out, dev)
	}
	slices.Sort(out)
	return out, nil
}

// copyTo copies the device's file to w.
func (s *spool) copyTo(w *bufio.Writer, device string) error {
	f, err := os.Open(s.files[device].path)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	if _, err := w.ReadFrom(f); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}
