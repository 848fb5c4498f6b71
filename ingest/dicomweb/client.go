package dicomweb

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ErrStoreFailed reports a STOW-RS request that stored none of its
// instances, or whose server answered with an error status.
var ErrStoreFailed = errors.New("dicomweb: store failed")

// maxResponseBytes bounds the response body a Client reads.
const maxResponseBytes = 8 << 20

// Client stores instances on a DICOMweb server with STOW-RS.
type Client struct {
	// BaseURL is the service root, e.g. "http://pacs:8042/dicom-web"
	// (requests go to BaseURL + "/studies").
	BaseURL string
	// HTTP is the client used (http.DefaultClient when nil).
	HTTP *http.Client
	// Header is added to every request (e.g. Authorization).
	Header http.Header
}

// Store sends the Part 10 instances in one multipart/related request, to
// /studies/{study} when study is set, else /studies. It returns the
// parsed response; the error wraps ErrStoreFailed when the server stored
// nothing (HTTP 409 or another error status) and is nil for 200 and 202
// (check Failed for partial failures).
func (c *Client) Store(ctx context.Context, study string, instances ...[]byte) (*Response, error) {
	if len(instances) == 0 {
		return nil, errors.New("dicomweb: nothing to store")
	}
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	boundary := "lungseg-" + hex.EncodeToString(rnd[:])
	var body bytes.Buffer
	for _, b := range instances {
		fmt.Fprintf(&body, "--%s\r\nContent-Type: %s\r\n\r\n", boundary, MediaTypeDICOM)
		body.Write(b)
		body.WriteString("\r\n")
	}
	fmt.Fprintf(&body, "--%s--\r\n", boundary)
	url := strings.TrimSuffix(c.BaseURL, "/") + "/studies"
	if study != "" {
		url += "/" + study
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &body)
	if err != nil {
		return nil, fmt.Errorf("dicomweb: %w", err)
	}
	for k, v := range c.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", fmt.Sprintf(`multipart/related; type="%s"; boundary=%s`, MediaTypeDICOM, boundary))
	req.Header.Set("Accept", MediaTypeDICOMJSON)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("dicomweb: storing on %s: %w", url, err)
	}
	defer res.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("dicomweb: reading the response of %s: %w", url, err)
	}
	resp := &Response{Status: res.StatusCode}
	if strings.HasPrefix(res.Header.Get("Content-Type"), MediaTypeDICOMJSON) || strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if resp.Stored, resp.Failed, err = parseDICOMJSON(rb); err != nil && res.StatusCode < 300 {
			return resp, err
		}
	}
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusAccepted {
		msg := strings.Join(res.Header.Values("Warning"), "; ")
		if msg == "" {
			msg = strings.TrimSpace(string(rb))
			if len(msg) > 300 {
				msg = msg[:300] + "..."
			}
		}
		return resp, fmt.Errorf("%w: %s answered %s: %s", ErrStoreFailed, url, res.Status, msg)
	}
	return resp, nil
}
