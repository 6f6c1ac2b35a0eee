package server

import (
	"context"
	"errors"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

type accountService struct{ s *Server }

var _ ferryv1connect.AccountServiceHandler = accountService{}

func sessionToProto(c engine.Credentials) *ferryv1.DeviceSession {
	return &ferryv1.DeviceSession{UserId: c.User.String(), DeviceId: c.Device.String(), Token: c.Token, Username: c.Username}
}

func (h accountService) Register(ctx context.Context, req *ferryv1.RegisterRequest) (*ferryv1.RegisterResponse, error) {
	var c engine.Credentials
	err := h.s.register(ctx, func() (err error) {
		c, err = h.s.eng.Register(ctx, engine.NewAccount{
			Username:    req.GetUsername(),
			Password:    req.GetPassword(),
			DisplayName: req.GetDisplayName(),
			DeviceName:  req.GetDeviceName(),
		})
		return err
	})
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.RegisterResponse{Session: sessionToProto(c)}, nil
}

func (h accountService) Login(ctx context.Context, req *ferryv1.LoginRequest) (*ferryv1.LoginResponse, error) {
	var c engine.Credentials
	err := h.s.login(ctx, req.GetUsername(), func() (err error) {
		c, err = h.s.eng.Login(ctx, req.GetUsername(), req.GetPassword(), req.GetDeviceName())
		return err
	})
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.LoginResponse{Session: sessionToProto(c)}, nil
}

func (h accountService) GetAccount(ctx context.Context, _ *ferryv1.GetAccountRequest) (*ferryv1.GetAccountResponse, error) {
	a := actorFrom(ctx)
	u, d, err := h.s.eng.Account(a)
	if err != nil {
		return nil, connectError(err)
	}
	usage, err := h.s.eng.Usage(a.User)
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.GetAccountResponse{User: userToProto(u), Device: deviceToProto(d, a.Device),
		UsageBytes: uint64(usage), QuotaBytes: uint64(h.s.eng.QuotaOf(a.User))}, nil
}

func (h accountService) ListDevices(ctx context.Context, _ *ferryv1.ListDevicesRequest) (*ferryv1.ListDevicesResponse, error) {
	a := actorFrom(ctx)
	ds, err := h.s.eng.Devices(a)
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.ListDevicesResponse{}
	for _, d := range ds {
		resp.Devices = append(resp.Devices, deviceToProto(d, a.Device))
	}
	return resp, nil
}

func (h accountService) RevokeDevice(ctx context.Context, req *ferryv1.RevokeDeviceRequest) (*ferryv1.RevokeDeviceResponse, error) {
	id, err := parseID("device_id", req.GetDeviceId())
	if err != nil {
		return nil, err
	}
	a, err := h.userWrite(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.s.eng.RevokeDevice(ctx, a, id); err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.RevokeDeviceResponse{}, nil
}

func (h accountService) SetDisplayName(ctx context.Context, req *ferryv1.SetDisplayNameRequest) (*ferryv1.SetDisplayNameResponse, error) {
	a, err := h.userWrite(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.s.eng.SetDisplayName(ctx, a, req.GetDisplayName())
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.SetDisplayNameResponse{User: userToProto(u)}, nil
}

func (h accountService) RenameDevice(ctx context.Context, req *ferryv1.RenameDeviceRequest) (*ferryv1.RenameDeviceResponse, error) {
	id, err := parseID("device_id", req.GetDeviceId())
	if err != nil {
		return nil, err
	}
	a, err := h.userWrite(ctx)
	if err != nil {
		return nil, err
	}
	d, err := h.s.eng.RenameDevice(ctx, a, id, req.GetName())
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.RenameDeviceResponse{Device: deviceToProto(d, a.Device)}, nil
}

func (h accountService) LookupUsers(ctx context.Context, req *ferryv1.LookupUsersRequest) (*ferryv1.LookupUsersResponse, error) {
	if len(req.GetUsernames()) > engine.MaxLookup {
		return nil, connect.NewError(connect.CodeResourceExhausted, "at most 100 usernames per lookup")
	}
	us, err := h.s.eng.LookupUsers(actorFrom(ctx), req.GetUsernames())
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.LookupUsersResponse{}
	for _, u := range us {
		resp.Users = append(resp.Users, userToProto(u))
	}
	return resp, nil
}

func (h accountService) ChangePassword(ctx context.Context, req *ferryv1.ChangePasswordRequest) (*ferryv1.ChangePasswordResponse, error) {
	a := actorFrom(ctx)
	u, _, err := h.s.eng.Account(a)
	if err != nil {
		return nil, connectError(err)
	}
	// A wrong current password is a failed login of the user: a stolen
	// token guesses no faster than a stranger.
	var n int
	err = h.s.signIn(signInKeys(h.s.clientAddr(ctx), signInLogin, u.Username), func() (err error) {
		n, err = h.s.eng.ChangePassword(ctx, a, req.GetCurrentPassword(), req.GetNewPassword(), req.GetSignOutOtherDevices())
		return err
	}, func(err error) bool { return errors.Is(err, engine.ErrForbidden) })
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.ChangePasswordResponse{DevicesSignedOut: uint32(n)}, nil
}

func (h accountService) BlockUser(ctx context.Context, req *ferryv1.BlockUserRequest) (*ferryv1.BlockUserResponse, error) {
	if err := h.block(ctx, req.GetUserId(), h.s.eng.Block); err != nil {
		return nil, err
	}
	return &ferryv1.BlockUserResponse{}, nil
}

func (h accountService) UnblockUser(ctx context.Context, req *ferryv1.UnblockUserRequest) (*ferryv1.UnblockUserResponse, error) {
	if err := h.block(ctx, req.GetUserId(), h.s.eng.Unblock); err != nil {
		return nil, err
	}
	return &ferryv1.UnblockUserResponse{}, nil
}

// block runs a block or an unblock (change) of the user userID names, a
// write of the caller's user (userWrite).
func (h accountService) block(ctx context.Context, userID string, change func(context.Context, engine.Actor, ulid.ULID) error) error {
	id, err := parseID("user_id", userID)
	if err != nil {
		return err
	}
	a, err := h.userWrite(ctx)
	if err != nil {
		return err
	}
	return connectError(change(ctx, a, id))
}

// userWrite lets in a write of the caller's user that commits whatever
// it finds (a block, a display name, a device renamed or revoked): under
// the push limit, as an ack of one marker is, so that one user calling in
// a loop does not take the writer. It returns the caller.
func (h accountService) userWrite(ctx context.Context) (engine.Actor, error) {
	a := actorFrom(ctx)
	if err := h.s.throttleAck(ctx, a.User, 1, nil); err != nil {
		return engine.Actor{}, connectError(err)
	}
	return a, nil
}

func (h accountService) ListBlockedUsers(ctx context.Context, _ *ferryv1.ListBlockedUsersRequest) (*ferryv1.ListBlockedUsersResponse, error) {
	us, err := h.s.eng.Blocked(actorFrom(ctx))
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.ListBlockedUsersResponse{}
	for _, u := range us {
		resp.Users = append(resp.Users, userToProto(u))
	}
	return resp, nil
}
