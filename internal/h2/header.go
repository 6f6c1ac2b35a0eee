package h2

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock is the header block being read: its fields as the HPACK
// decoder emits them, checked as RFC 9113 (section 8.2 and 8.3) asks.
type headerBlock struct {
	c          *conn
	active     bool // between a HEADERS without END_HEADERS and the block's end
	streamID   uint32
	endStream  bool
	selfDep    bool
	compressed int    // bytes of the block read
	block      []byte // the block so far, when it goes on in CONTINUATION frames
	size       int    // of the decoded list, as SETTINGS_MAX_HEADER_LIST_SIZE counts it
	tooBig     bool
	invalid    string // why the block is malformed; "" if it is not
	sawRegular bool
	sawPseudo  bool
	pseudos    uint8 // the request pseudo-headers seen, a bit each (emit)

	method, scheme, authority, path string
	fields                          http.Header
	cookies                         []string
}

// headerBlocks holds the connections' headerBlocks between blocks: a
// connection, mostly idle, holds one only while it reads a block.
var headerBlocks = sync.Pool{New: func() any { return new(headerBlock) }}

func (hb *headerBlock) start(c *conn, id uint32, endStream, selfDep bool) {
	*hb = headerBlock{c: c, active: true, streamID: id, endStream: endStream, selfDep: selfDep}
}

// emit takes one decoded field.
func (hb *headerBlock) emit(f hpack.HeaderField) {
	hb.size += int(f.Size())
	if hb.size > hb.c.maxHeaderBlock() {
		hb.tooBig = true
	}
	if hb.tooBig || hb.invalid != "" {
		return // decoded all the same: the connection's HPACK table depends on it
	}
	if f.IsPseudo() {
		hb.sawPseudo = true
		if hb.sawRegular {
			hb.invalid = "a pseudo-header after a regular one"
			return
		}
		var p *string
		var bit uint8
		switch f.Name {
		case ":method":
			p, bit = &hb.method, 1
		case ":scheme":
			p, bit = &hb.scheme, 2
		case ":authority":
			p, bit = &hb.authority, 4
		case ":path":
			p, bit = &hb.path, 8
		default:
			hb.invalid = "the pseudo-header " + strconv.Quote(f.Name) + ", unknown in a request"
			return
		}
		// Seen, not set: an empty :authority may come first.
		if hb.pseudos&bit != 0 {
			hb.invalid = "the pseudo-header " + f.Name + " twice"
			return
		}
		hb.pseudos |= bit
		if f.Value == "" && f.Name != ":authority" {
			hb.invalid = "an empty " + f.Name
			return
		}
		*p = f.Value
		return
	}
	hb.sawRegular = true
	if !validFieldName(f.Name) {
		hb.invalid = "the header field name " + strconv.Quote(f.Name) + " is invalid (names are lower case tokens)"
		return
	}
	if !httpguts.ValidHeaderFieldValue(f.Value) {
		hb.invalid = "the header field " + f.Name + " has an invalid value"
		return
	}
	switch f.Name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		hb.invalid = "the connection-specific header field " + f.Name
		return
	case "te":
		if f.Value != "trailers" {
			hb.invalid = "te other than trailers"
			return
		}
	case "cookie":
		hb.cookies = append(hb.cookies, f.Value)
		return
	}
	if hb.fields == nil {
		hb.fields = make(http.Header, 8)
	}
	k := canonical(f.Name)
	hb.fields[k] = append(hb.fields[k], f.Value)
}

// validFieldName reports whether name is a token with no upper case.
func validFieldName(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return false
		}
	}
	return true
}

// newRequest makes the request of a header block that opens a stream, and
// the handler to serve it: the server's, or one that answers a request
// the server cannot take with its status. The caller holds mu.
func (c *conn) newRequest(hb *headerBlock) (*stream, *http.Request, http.Handler, error) {
	h := c.srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	refuse := func(code int, why string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, why, code) })
	}
	refused := true
	switch {
	case hb.tooBig:
		h = refuse(http.StatusRequestHeaderFieldsTooLarge, "request header fields too large")
	case hb.method == "" || !httpguts.ValidHeaderFieldName(hb.method):
		return nil, nil, nil, streamError{hb.streamID, http2.ErrCodeProtocol, "a request without a valid :method"}
	case hb.method == http.MethodConnect:
		h = refuse(http.StatusMethodNotAllowed, "CONNECT is not supported")
	case hb.scheme != "http" && hb.scheme != "https":
		return nil, nil, nil, streamError{hb.streamID, http2.ErrCodeProtocol, "a request without :scheme http or https"}
	case !strings.HasPrefix(hb.path, "/") && !(hb.path == "*" && hb.method == http.MethodOptions):
		return nil, nil, nil, streamError{hb.streamID, http2.ErrCodeProtocol, "a :path not in origin form (\"/...\")"}
	default:
		refused = false
	}
	header := hb.fields
	if header == nil {
		header = make(http.Header)
	}
	if len(hb.cookies) > 0 {
		header["Cookie"] = []string{strings.Join(hb.cookies, "; ")}
	}
	host := hb.authority
	if host == "" {
		host = header.Get("Host")
	}
	u, err := url.ParseRequestURI(hb.path)
	if hb.path == "*" && hb.method == http.MethodOptions {
		u, err = &url.URL{Path: "*"}, nil
	}
	switch {
	case err != nil:
		u = &url.URL{}
		if !refused {
			h = refuse(http.StatusBadRequest, "bad :path")
		}
	case !refused && !httpguts.ValidHostHeader(host):
		h = refuse(http.StatusBadRequest, "bad :authority")
	}
	cl := int64(-1)
	if vv := header["Content-Length"]; len(vv) > 0 {
		n, err := strconv.ParseUint(vv[0], 10, 63)
		if len(vv) > 1 || err != nil {
			return nil, nil, nil, streamError{hb.streamID, http2.ErrCodeProtocol, "an invalid content-length"}
		}
		cl = int64(n)
	}
	if hb.endStream {
		if cl > 0 {
			return nil, nil, nil, streamError{hb.streamID, http2.ErrCodeProtocol, "a content-length with no body"}
		}
		cl = 0
	}
	var trailer http.Header
	for _, v := range header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if k == "" || !httpguts.ValidTrailerHeader(k) {
				continue // not allowed as trailers
			}
			if trailer == nil {
				trailer = make(http.Header)
			}
			trailer[k] = nil
		}
	}
	cctx, cancel := context.WithCancel(c.ctx)
	ctx := &streamContext{Context: cctx}
	req := &http.Request{
		Method:        hb.method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        header,
		ContentLength: cl,
		Host:          host,
		RemoteAddr:    c.remoteAddr,
		RequestURI:    hb.path,
		Trailer:       trailer,
	}
	req = req.WithContext(ctx)
	st := &stream{c: c, id: hb.streamID, cancel: cancel, done: cctx.Done(), declLen: cl, reqTrailer: trailer, sendWin: c.peerWin, recvWin: c.set.streamWindow, counted: true}
	st.cond.L = &c.mu
	if hb.endStream {
		req.Body = http.NoBody
		st.closeRemote()
	} else {
		req.Body = &body{st: st}
	}
	return st, req, h, nil
}

// streamContext is a request's context: the stream's, with its slot.
type streamContext struct {
	context.Context
	slot any
}

type slotKey struct{}

func (c *streamContext) Value(key any) any {
	if key == (slotKey{}) {
		return &c.slot
	}
	return c.Context.Value(key)
}

// StreamSlot returns a slot for one value that lives as long as the stream
// whose request's context is ctx (or is derived from it), or nil when ctx
// is not a request's of this package's Server. A middleware keeps there
// what it would otherwise add to the request's context: without a copy
// of the request (Request.WithContext copies 320 bytes, which a
// long-lived stream's handler holds for its life).
func StreamSlot(ctx context.Context) *any {
	s, _ := ctx.Value(slotKey{}).(*any)
	return s
}

// canonical returns the canonical form of a lower-case field name, without
// allocating for the common ones.
func canonical(name string) string {
	if k, ok := commonCanonical[name]; ok {
		return k
	}
	return http.CanonicalHeaderKey(name)
}

// lower returns the lower-case form of a canonical field name, without
// allocating for the common ones.
func lower(key string) string {
	if k, ok := commonLower[key]; ok {
		return k
	}
	return strings.ToLower(key)
}

var commonCanonical, commonLower = func() (map[string]string, map[string]string) {
	canon, low := map[string]string{}, map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Access-Control-Allow-Credentials",
		"Access-Control-Allow-Headers", "Access-Control-Allow-Methods", "Access-Control-Allow-Origin",
		"Access-Control-Expose-Headers", "Access-Control-Max-Age", "Access-Control-Request-Headers",
		"Access-Control-Request-Method", "Authorization", "Cache-Control", "Connect-Accept-Encoding",
		"Connect-Content-Encoding", "Connect-Protocol-Version", "Connect-Timeout-Ms", "Content-Encoding",
		"Content-Length", "Content-Type", "Cookie", "Date", "Grpc-Accept-Encoding", "Grpc-Encoding",
		"Grpc-Message", "Grpc-Status", "Grpc-Status-Details-Bin", "Grpc-Timeout", "Host", "Origin",
		"Referer", "Te", "Trailer", "User-Agent", "Vary", "X-Forwarded-For", "X-Grpc-Web",
		"X-User-Agent",
	} {
		l := strings.ToLower(k)
		canon[l], low[k] = k, l
	}
	return canon, low
}()
