package config

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// CheckLog names LOG_LEVEL or LOG_FORMAT when it is not one NewLogger
// understands.
func CheckLog(level, format string) error {
	if _, err := parseLevel(level); err != nil {
		return err
	}
	switch strings.ToLower(format) {
	case "", "text", "json":
		return nil
	}
	return fmt.Errorf("LOG_FORMAT (-log-format) = %q: want text or json", format)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("LOG_LEVEL (-log-level) = %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger returns the logger level and format describe (as CheckLog
// reads them; a bad one means info or text), writing to w.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	l, err := parseLevel(level)
	if err != nil {
		l = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: l}
	if strings.EqualFold(format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
