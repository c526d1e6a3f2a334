package proxy

import (
	"context"
	"encoding/json"
	"time"

	"github.com/coder/websocket"
)

// send queues a JSON frame.
func (c *wsConn) send(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	return c.sendRaw(b)
}

// sendRaw queues a frame; false when the connection is closing. A queue
// that overflows marks the consumer slow: the queue is dropped and the
// writer closes the connection with StatusSlowConsumer.
func (c *wsConn) sendRaw(b []byte) bool {
	c.mu.Lock()
	if c.slow || c.ctx.Err() != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) > 0 && (len(c.queue) >= c.frames || c.queued+len(b) > c.maxBytes) {
		c.slow = true
		c.queue, c.queued = nil, 0
		for _, s := range c.subs {
			s.cancel()
		}
		c.mu.Unlock()
		c.wake()
		return false
	}
	c.queue = append(c.queue, b)
	c.queued += len(b)
	c.mu.Unlock()
	c.wake()
	return true
}

func (c *wsConn) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// writer sends queued frames in order.
func (c *wsConn) writer(timeout time.Duration) {
	for {
		select {
		case <-c.notify:
		case <-c.ctx.Done():
			return
		}
		for {
			c.mu.Lock()
			if c.slow {
				c.mu.Unlock()
				c.p.metrics.ws.slowCloses.Add(1)
				c.close(wsReasonSlowConsumer, StatusSlowConsumer, "slow consumer")
				c.cancel()
				return
			}
			if len(c.queue) == 0 {
				c.mu.Unlock()
				break
			}
			b := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			c.queued -= len(b)
			c.mu.Unlock()
			ctx, cancel := context.WithTimeout(c.ctx, timeout)
			err := c.ws.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				c.setClosed(wsReasonWriteFailed, statusNoClose)
				c.cancel()
				return
			}
			c.p.metrics.bytesSent.Add(uint64(len(b)))
			c.p.metrics.ws.framesSent.Add(1)
			c.p.metrics.ws.bytesSent.Add(uint64(len(b)))
		}
	}
}
