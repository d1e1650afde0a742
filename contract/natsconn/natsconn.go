// Package natsconn holds the NATS connection options the four workers share:
// a client name, the worker's own reply inbox, reconnecting for ever
// (including when the first connect fails) and logging of disconnects and
// reconnects with any password in the URL redacted.
package natsconn

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"trm-live/contract"
)

// Hooks run beside the log lines of Options' handlers; nil ones are skipped.
type Hooks struct {
	// Disconnected runs when the connection is lost.
	Disconnected func()
	// Reconnected runs once the connection is back.
	Reconnected func()
}

// Options are the options of a worker's NATS connection: client name name,
// replies under contract.InboxPrefix(user) (the worker's NATS user may read
// no other replies), unlimited reconnects every wait, a first connect that
// retries in the background instead of failing, a warning on a disconnect
// with an error and an info line naming the redacted URL on a reconnect.
// A worker appends its own options (an ErrorHandler) after these.
func Options(name, user string, wait time.Duration, log *slog.Logger, hooks Hooks) []nats.Option {
	return []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(contract.InboxPrefix(user)),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(wait),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if hooks.Disconnected != nil {
				hooks.Disconnected()
			}
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", contract.RedactURLs(c.ConnectedUrl()))
			if hooks.Reconnected != nil {
				hooks.Reconnected()
			}
		}),
	}
}
