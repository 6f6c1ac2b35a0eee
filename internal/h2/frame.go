package h2

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/net/http2"
)

// The frame types, flags, settings and error codes are x/net's (RFC 9113,
// section 6): their String methods name them in logs and tests.
const (
	frameData         = http2.FrameData
	frameHeaders      = http2.FrameHeaders
	framePriority     = http2.FramePriority
	frameRSTStream    = http2.FrameRSTStream
	frameSettings     = http2.FrameSettings
	framePushPromise  = http2.FramePushPromise
	framePing         = http2.FramePing
	frameGoAway       = http2.FrameGoAway
	frameWindowUpdate = http2.FrameWindowUpdate
	frameContinuation = http2.FrameContinuation

	flagEndStream  = http2.FlagDataEndStream // DATA and HEADERS
	flagAck        = http2.FlagSettingsAck   // SETTINGS and PING
	flagEndHeaders = http2.FlagHeadersEndHeaders
	flagPadded     = http2.FlagHeadersPadded // DATA and HEADERS
	flagPriority   = http2.FlagHeadersPriority
)

const (
	frameHeaderLen  = 9
	minMaxFrameSize = 1 << 14   // the least SETTINGS_MAX_FRAME_SIZE may be, and its default
	maxMaxFrameSize = 1<<24 - 1 // the most
	maxWindow       = 1<<31 - 1
	defaultWindow   = 65535 // a stream's and the connection's window before SETTINGS say otherwise
	defaultTable    = 4096  // HPACK's dynamic table size before SETTINGS say otherwise
)

// frameHeader is the 9 bytes before every frame's payload.
type frameHeader struct {
	length   uint32
	typ      http2.FrameType
	flags    http2.Flags
	streamID uint32
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length:   uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]),
		typ:      http2.FrameType(b[3]),
		flags:    http2.Flags(b[4]),
		streamID: binary.BigEndian.Uint32(b[5:]) & (1<<31 - 1), // the reserved bit is ignored
	}
}

func (h frameHeader) has(f http2.Flags) bool { return h.flags&f != 0 }

// appendFrameHeader appends the header of a frame whose payload is length
// bytes long.
func appendFrameHeader(b []byte, length int, typ http2.FrameType, flags http2.Flags, streamID uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), byte(flags),
		byte(streamID>>24), byte(streamID>>16), byte(streamID>>8), byte(streamID))
}

func appendRSTStream(b []byte, id uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 4, frameRSTStream, 0, id)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

func appendWindowUpdate(b []byte, id uint32, n uint32) []byte {
	b = appendFrameHeader(b, 4, frameWindowUpdate, 0, id)
	return binary.BigEndian.AppendUint32(b, n)
}

func appendGoAway(b []byte, lastID uint32, code http2.ErrCode, debug string) []byte {
	b = appendFrameHeader(b, 8+len(debug), frameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastID)
	b = binary.BigEndian.AppendUint32(b, uint32(code))
	return append(b, debug...)
}

func appendPing(b []byte, ack bool, data [8]byte) []byte {
	var flags http2.Flags
	if ack {
		flags = flagAck
	}
	b = appendFrameHeader(b, 8, framePing, flags, 0)
	return append(b, data[:]...)
}

func appendSettings(b []byte, settings ...http2.Setting) []byte {
	b = appendFrameHeader(b, 6*len(settings), frameSettings, 0, 0)
	for _, s := range settings {
		b = binary.BigEndian.AppendUint16(b, uint16(s.ID))
		b = binary.BigEndian.AppendUint32(b, s.Val)
	}
	return b
}

// connError ends the connection: GOAWAY with its code.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return fmt.Sprintf("http2: connection error %v: %s", e.code, e.reason)
}

// streamError ends one stream: RST_STREAM with its code.
type streamError struct {
	id     uint32
	code   http2.ErrCode
	reason string
}

func (e streamError) Error() string {
	return fmt.Sprintf("http2: stream %d error %v: %s", e.id, e.code, e.reason)
}
